//! `agentgate demo` and `agentgate demo-agent`: a demo agent service, and a one-command
//! demo that runs three of them behind the gateway.

pub mod agent;
pub mod llm;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;
use pingora::services::ServiceWithDependents;

use agent::DemoAgent;

/// The config the demo runs: the shipped example, with its keys file beside it.
const DEMO_CONFIG: &str = include_str!("../../config/agentgate.toml");
const DEMO_KEYS: &str = include_str!("../../config/keys.toml");
const DEMO_AGENTS: [(&str, &str); 3] = [
    ("agent-1", "127.0.0.1:9001"),
    ("agent-2", "127.0.0.1:9002"),
    ("agent-3", "127.0.0.1:9003"),
];

/// The demo agents' wait before the first content token of an LLM answer: time to
/// first token is then visibly longer than time to first byte.
const DEMO_FIRST_TOKEN_DELAY: Duration = Duration::from_millis(300);

fn agent_service(
    name: &str,
    listen: &str,
    token_delay: Duration,
    first_token_delay: Duration,
) -> Service<DemoAgent> {
    let mut service = Service::new(
        format!("demo agent {name}"),
        DemoAgent {
            name: name.to_string(),
            token_delay,
            first_token_delay,
        },
    );
    service.add_tcp(listen);
    service.threads = Some(1);
    service
}

/// Runs one demo agent until SIGINT/SIGTERM.
pub fn run_agent(
    listen: SocketAddr,
    name: &str,
    token_delay: Duration,
    first_token_delay: Duration,
) -> i32 {
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server.add_service(agent_service(
        name,
        &listen.to_string(),
        token_delay,
        first_token_delay,
    ));
    eprintln!("demo agent {name} listening on {listen}");
    server.run(RunArgs::default());
    0
}

/// Runs three demo agents and the gateway from the embedded example config.
pub fn run_demo() -> i32 {
    let dir = std::env::temp_dir().join(format!("agentgate-demo-{}", std::process::id()));
    if let Err(e) = write_demo_files(&dir) {
        eprintln!("cannot write the demo config to {}: {e}", dir.display());
        return 2;
    }
    let path = dir.join("agentgate.toml");
    let config = match crate::config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return 2;
        }
    };
    let listen = config.server.listen;
    let admin = config.server.admin_listen;
    let gateway = format!("http://{}", local_url_host(listen));
    println!(
        "agentgate demo: open http://{}/ to watch the gateway work (the live admin page)",
        local_url_host(admin)
    );
    println!();
    println!("Three demo agents behind the gateway (they also speak the OpenAI chat completions and Anthropic messages APIs):");
    for (name, addr) in DEMO_AGENTS {
        println!("  agent {name:8} http://{addr}");
    }
    println!("  gateway        {gateway}");
    println!(
        "  admin          http://{}/  (the live page; /metrics /readyz /alerts /config)",
        local_url_host(admin)
    );
    println!();
    println!("Try:");
    println!("  curl -s '{gateway}/v1/conversations?limit=5'");
    println!(
        "  curl -s -X POST {gateway}/v1/conversations/42/messages -d '{{\"text\":\"hello\"}}'"
    );
    println!("  curl -N -X POST '{gateway}/v1/conversations/42/stream?tokens=10'");
    println!(
        "  curl -N {gateway}/v1/chat/completions -d '{{\"model\":\"demo-mini\",\"stream\":true,\"stream_options\":{{\"include_usage\":true}},\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'"
    );
    println!("  (or any OpenAI client with base_url {gateway}/v1; tokens and time to first token show on /metrics)");
    println!();
    println!("Ctrl-C stops everything.");
    let agents: Vec<Box<dyn ServiceWithDependents>> = DEMO_AGENTS
        .iter()
        .map(|(name, addr)| {
            Box::new(agent_service(
                name,
                addr,
                Duration::from_millis(100),
                DEMO_FIRST_TOKEN_DELAY,
            )) as Box<dyn ServiceWithDependents>
        })
        .collect();
    let code = crate::server::run(config, crate::server::Start::Fresh, agents);
    let _ = std::fs::remove_dir_all(&dir);
    code
}

fn write_demo_files(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("agentgate.toml"), DEMO_CONFIG)?;
    std::fs::write(dir.join("keys.toml"), DEMO_KEYS)?;
    Ok(())
}

fn local_url_host(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    }
}
