//! Every input a fuzzer ever crashed on (fuzz/regressions/<target>/) runs again here with
//! the same property checks the fuzz targets use, plus the seed corpus.

#[path = "../fuzz/props/mod.rs"]
mod props;

use std::path::Path;

fn run(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut ran = 0;
    for dir in ["regressions", "corpus"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries.flatten() {
            let data = std::fs::read(entry.path()).unwrap();
            check(&data);
            ran += 1;
        }
    }
    assert!(ran > 0, "no inputs for {target}");
}

#[test]
fn config_parser_inputs() {
    run("config_parser", props::config_parser);
}

#[test]
fn traceparent_inputs() {
    run("traceparent", props::traceparent);
}

#[test]
fn query_rewrite_inputs() {
    run("query_rewrite", props::query_rewrite);
}

#[test]
fn path_normalize_inputs() {
    run("path_normalize", props::path_normalize);
}

#[test]
fn sse_stream_inputs() {
    run("sse_stream", props::sse_stream);
}

#[test]
fn ai_request_inputs() {
    run("ai_request", props::ai_request);
}
