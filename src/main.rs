//! The `cotrackpro-voice` binary: everything happens in the library's [`cli::run`].

use cotrackpro_voice::cli;

fn main() -> std::process::ExitCode {
    cli::run(std::env::args_os().skip(1))
}
