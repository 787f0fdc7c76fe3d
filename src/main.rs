fn main() -> std::process::ExitCode {
    shir::cli::main()
}
