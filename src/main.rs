//! The `lightchain` binary: see [`lightchain::cli`].

fn main() -> std::process::ExitCode {
    lightchain::cli::main()
}
