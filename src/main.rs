//! The `offsession` binary; see `offsession --help`.

fn main() -> std::process::ExitCode {
    offsession_runner::main()
}
