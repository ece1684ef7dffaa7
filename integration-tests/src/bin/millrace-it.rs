//! The `millrace` command line, built inside the integration-test package
//! so tests run exactly the code of the `millrace` binary (see Cargo.toml).
fn main() -> std::process::ExitCode {
    millrace::cli::main()
}
