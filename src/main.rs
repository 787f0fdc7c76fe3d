fn main() -> std::process::ExitCode {
    // Tests pause a node at chosen steps (src/worker/failpoints.rs) through `FAILPOINTS`;
    // only builds with the `failpoints` feature read it. Held for the whole run.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    shir::cli::main()
}
