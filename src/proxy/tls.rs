//! TLS on the listener.
//!
//! The handshake runs in the gateway's own connection wrapper (`refusals`), not in
//! pingora's listener, for three reasons: each handshake takes the acceptor of the
//! config in force, so a reload's new certificate reaches new connections while open
//! ones keep theirs; a failure is counted and logged at debug level (pingora's listener
//! logs every failed handshake at error level, which a scanner turns into a flood); and
//! the handshake has the header deadline, so a client that opens a connection and
//! sends nothing holds it no longer than one that trickles its header.
//!
//! TLS to the agents is `balance::peer`.

use std::time::Duration;

use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::tls::server::handshake;
use pingora::protocols::Stream;

use crate::config::TlsAcceptor;
use crate::observe::metrics::HandshakeFailures;

/// The listener's TLS handshake on an accepted connection, within `limit`. `None`: the
/// handshake failed (counted by reason) and the connection is closed.
pub async fn accept(
    acceptor: &TlsAcceptor,
    stream: Stream,
    limit: Duration,
    failures: &HandshakeFailures,
) -> Option<Stream> {
    let Ok(l4) = stream.into_any().downcast::<L4Stream>() else {
        log::error!("an accepted connection is not a TCP stream: closed without TLS");
        return None;
    };
    match tokio::time::timeout(limit, handshake(&acceptor.0, *l4)).await {
        Ok(Ok(tls)) => Some(Box::new(tls)),
        Ok(Err(e)) => {
            failures.protocol.increment(1);
            log::debug!("TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            failures.timeout.increment(1);
            log::debug!("no complete TLS handshake within {limit:?}: connection closed");
            None
        }
    }
}
