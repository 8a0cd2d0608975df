//! The `agentgate` binary: everything lives in the library; this only runs the CLI.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(agentgate::cli::main());
}
