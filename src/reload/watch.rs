//! `watch_config`: reload when the config file or a file it names changes.
//!
//! The folders holding the files are watched (notify: inotify on Linux), not the files:
//! an editor that saves by renaming a new file into place, and the Kubernetes ConfigMap
//! mount, where the file is a symlink into a `..data` folder that the kubelet swaps by
//! renaming, both replace the file rather than write to it. An event that names a
//! watched file, or one of the `..` entries of a ConfigMap, starts a short quiet period
//! (more events extend it, up to [`MAX_WAIT`]); then the files' contents are compared
//! with those of the last reload, and only a real change reloads, through the same path
//! as SIGHUP. An invalid edit keeps the old config, and is counted and logged like any
//! rejected reload; the same bad content is not tried twice.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::reload;
use crate::proxy::Observer;
use crate::state::Shared;

/// How long the files must be quiet before they are read.
const QUIET: Duration = Duration::from_millis(300);
/// The longest a stream of events can put a reload off.
const MAX_WAIT: Duration = Duration::from_secs(2);

pub struct WatchConfig {
    pub shared: Arc<Shared>,
    pub observer: Arc<Observer>,
}

/// What is watched for one config: the folders, and the names in them that matter.
struct Watched {
    folders: Vec<PathBuf>,
    names: HashSet<OsString>,
}

impl Watched {
    fn of(files: &[PathBuf]) -> Watched {
        let mut folders: Vec<PathBuf> = files.iter().map(|f| folder_of(f)).collect();
        folders.sort();
        folders.dedup();
        Watched {
            folders,
            names: files
                .iter()
                .filter_map(|f| f.file_name().map(|n| n.to_os_string()))
                .collect(),
        }
    }

    /// Whether an event about `path` can be a change to the files.
    fn concerns(&self, path: &Path) -> bool {
        path.file_name()
            .is_some_and(|n| self.names.contains(n) || n.to_string_lossy().starts_with(".."))
    }
}

fn folder_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The contents of `files` (through symlinks), hashed; a missing file hashes as empty.
fn fingerprint(files: &[PathBuf]) -> [u8; 32] {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(std::fs::read(f).unwrap_or_default());
        h.update([0]);
    }
    h.finalize().into()
}

#[async_trait]
impl BackgroundService for WatchConfig {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Events come from notify's own thread; a full queue loses nothing that
        // matters, since any event leads to the same comparison of the files.
        let (tx, mut rx) = mpsc::channel::<PathBuf>(256);
        let mut watcher = match notify::recommended_watcher(
            move |res: notify::Result<notify::Event>| {
                if let Ok(event) = res {
                    for path in event.paths {
                        let _ = tx.try_send(path);
                    }
                }
            },
        ) {
            Ok(w) => w,
            Err(e) => {
                log::error!("watch_config: cannot watch the config files ({e}); reload with SIGHUP or POST /reload");
                return;
            }
        };
        let mut folders: Vec<PathBuf> = Vec::new();
        // What the files held when they were last read (at start, or by a reload).
        let mut last = fingerprint(&self.shared.runtime.load().config.files());
        loop {
            // The files follow the config in force: a reload may name others.
            let config = Arc::clone(&self.shared.runtime.load().config);
            let files = config.files();
            let watched = config.server.watch_config.then(|| Watched::of(&files));
            let wanted = watched
                .as_ref()
                .map(|w| w.folders.clone())
                .unwrap_or_default();
            for f in folders.iter().filter(|f| !wanted.contains(f)) {
                let _ = watcher.unwatch(f);
            }
            for f in wanted.iter().filter(|f| !folders.contains(f)) {
                if let Err(e) = watcher.watch(f, RecursiveMode::NonRecursive) {
                    log::warn!("watch_config: cannot watch {} ({e}); changes there need SIGHUP or POST /reload", f.display());
                }
            }
            if folders != wanted && !wanted.is_empty() {
                log::info!(
                    "watch_config: watching {} (reloads when it or a file it names changes)",
                    config.path.display()
                );
            }
            folders = wanted;

            let first = tokio::select! {
                _ = shutdown.changed() => return,
                p = rx.recv() => match p { Some(p) => p, None => return },
            };
            let Some(w) = &watched else { continue };
            if !w.concerns(&first) {
                continue;
            }
            // Quiet period: the rest of a save or of a ConfigMap swap arrives first.
            let deadline = tokio::time::Instant::now() + MAX_WAIT;
            loop {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(QUIET) => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                    p = rx.recv() => if p.is_none() { return },
                }
            }
            let now = fingerprint(&files);
            if now == last {
                continue;
            }
            last = now;
            log::info!(
                "watch_config: {} or a file it names changed: reloading",
                config.path.display()
            );
            match reload(&self.shared, &self.observer) {
                // The new config may name other files: what they hold now is the base.
                Ok(_) => last = fingerprint(&self.shared.runtime.load().config.files()),
                Err(errors) => {
                    let span = tracing::error_span!(
                        "config.reload",
                        event = "config_reload_failed",
                        trigger = "watch",
                        errors = %errors,
                    );
                    let _in = span.enter();
                    tracing::error!(
                        "watch_config: the changed config is invalid; still serving the previous one"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_about_the_files_and_a_configmap_swap_concern_the_watch() {
        let w = Watched::of(&[PathBuf::from("/etc/agentgate/agentgate.toml")]);
        assert_eq!(w.folders, [PathBuf::from("/etc/agentgate")]);
        assert!(w.concerns(Path::new("/etc/agentgate/agentgate.toml")));
        assert!(w.concerns(Path::new("/etc/agentgate/..data")));
        assert!(!w.concerns(Path::new("/etc/agentgate/access.log")));
    }

    #[test]
    fn the_fingerprint_follows_the_contents() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.toml");
        std::fs::write(&f, "a = 1").unwrap();
        let one = fingerprint(std::slice::from_ref(&f));
        assert_eq!(one, fingerprint(std::slice::from_ref(&f)));
        std::fs::write(&f, "a = 2").unwrap();
        assert_ne!(one, fingerprint(std::slice::from_ref(&f)));
    }
}
