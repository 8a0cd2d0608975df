//! The command line (SPEC §1).

use std::io::Read;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config;

#[derive(Parser)]
#[command(
    name = "agentgate",
    version = crate::VERSION,
    about = "An observability-first reverse proxy for AI agent services"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve with the given config.
    Run {
        /// Config file; defaults to $AGENTGATE_CONFIG, then config/agentgate.toml.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Take the listening sockets from the running agentgate over
        /// `server.upgrade_sock` (zero-downtime binary upgrade): start this, then send
        /// the old process SIGQUIT.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config: prints `ok` and a summary, or every error with its location.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Also resolve every backend name: one that resolves to nothing is an error.
        #[arg(long)]
        strict: bool,
    },
    /// Run three demo agents and the gateway in front of them.
    #[cfg(feature = "demo")]
    Demo,
    /// Run one demo agent.
    #[cfg(feature = "demo")]
    DemoAgent {
        #[arg(long)]
        listen: String,
        #[arg(long, default_value = "demo-agent")]
        name: String,
        /// Delay between streamed tokens, e.g. "100ms".
        #[arg(long, default_value = "100ms")]
        token_delay: String,
        /// Wait before the first content token of an LLM answer (chat completions,
        /// messages), after the role chunk or message_start, e.g. "300ms".
        #[arg(long, default_value = "300ms")]
        first_token_delay: String,
    },
    /// Alert rule tools.
    Alerts {
        #[command(subcommand)]
        command: AlertsCommand,
    },
    /// API key tools.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
pub enum AlertsCommand {
    /// Print the config's [[alerts]] as a Prometheus rule group.
    Export {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Read an API key on stdin and print the [[keys]] entry for the keys file.
    Hash {
        /// Tenant id to put in the entry.
        #[arg(long, default_value = "tenant-id")]
        id: String,
    },
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, upgrade } => {
            let path = config.unwrap_or_else(config::default_config_path);
            let start = if upgrade {
                crate::server::Start::Upgrade
            } else {
                crate::server::Start::Fresh
            };
            match config::load(&path) {
                Ok(c) => crate::server::run(c, start, Vec::new()),
                Err(errors) => {
                    eprintln!("{errors}");
                    eprintln!("agentgate: not started: fix the config errors above");
                    2
                }
            }
        }
        Command::Check { config, strict } => match if strict {
            config::load_strict(&config)
        } else {
            config::load(&config)
        } {
            Ok(c) => {
                println!("ok");
                println!("{}", config::summary(&c));
                println!("{}", config::trace_summary(&c));
                0
            }
            Err(errors) => {
                eprintln!("{errors}");
                2
            }
        },
        #[cfg(feature = "demo")]
        Command::Demo => crate::demo::run_demo(),
        #[cfg(feature = "demo")]
        Command::DemoAgent {
            listen,
            name,
            token_delay,
            first_token_delay,
        } => {
            let listen: std::net::SocketAddr = match config::validate::parse_socket_addr(&listen) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("--listen: {e}");
                    return 2;
                }
            };
            let delay = match config::duration::parse_duration(&token_delay) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("--token-delay: {e}");
                    return 2;
                }
            };
            let first = match config::duration::parse_duration(&first_token_delay) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("--first-token-delay: {e}");
                    return 2;
                }
            };
            crate::demo::run_agent(listen, &name, delay, first)
        }
        Command::Alerts {
            command: AlertsCommand::Export { config },
        } => match config::load(&config) {
            Ok(c) => {
                print!("{}", crate::alerts::export::rules_yaml(&c));
                0
            }
            Err(errors) => {
                eprintln!("{errors}");
                2
            }
        },
        Command::Keys {
            command: KeysCommand::Hash { id },
        } => {
            let mut input = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut input) {
                eprintln!("cannot read the key from stdin: {e}");
                return 2;
            }
            let key = input.trim_end_matches(['\n', '\r']);
            if key.is_empty() {
                eprintln!("no key on stdin: pipe the key in, e.g. `printf %s \"$KEY\" | agentgate keys hash --id tenant-a`");
                return 2;
            }
            let digest = config::keys::hash_key(key);
            println!("[[keys]]");
            println!("id = \"{id}\"");
            println!("sha256 = \"{}\"", hex::encode(digest));
            0
        }
    }
}
