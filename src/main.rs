//! The `agentgate` binary: everything lives in the library; this only runs the CLI.

#[global_allocator]
static GLOBAL: agentgate::alloc::Allocator = agentgate::alloc::Allocator;

fn main() {
    agentgate::alloc::configure();
    std::process::exit(agentgate::cli::main());
}
