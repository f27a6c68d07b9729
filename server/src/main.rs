fn main() -> std::process::ExitCode {
    signet::cli::main()
}
