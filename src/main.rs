//! The `agentgate` binary: everything lives in the library; this only runs the CLI.

// `--features system-allocator` leaves the allocator to the platform's malloc, whose
// calls heap profilers (heaptrack, valgrind's massif) intercept; mimalloc's they cannot
// see. Never for production: it undoes the memory and speed figures of the README.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: agentgate::alloc::Allocator = agentgate::alloc::Allocator;

/// Sets the allocator's options before anything allocates: the Rust runtime allocates
/// before `main`, and mimalloc sizes its first arena on the first allocation, so a call
/// at the top of `main` comes too late (measured: no effect). An `.init_array` entry runs
/// when the loader starts the process, before the runtime's start-up code.
#[cfg(not(feature = "system-allocator"))]
#[used]
#[link_section = ".init_array"]
static CONFIGURE_ALLOCATOR: extern "C" fn() = configure_allocator;

#[cfg(not(feature = "system-allocator"))]
extern "C" fn configure_allocator() {
    agentgate::alloc::configure();
}

fn main() {
    std::process::exit(agentgate::cli::main());
}
