//! backorderctl: the operator CLI. Everything but exit codes lives in the
//! library (`src/lib.rs`).

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = backorderctl::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            report(&format!("could not start the async runtime: {e}"));
            return ExitCode::from(backorderctl::EXIT_FAILURE);
        }
    };
    match runtime.block_on(backorderctl::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`backorderctl emails | head`): nothing to say.
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            report(&e.to_string());
            ExitCode::from(e.exit_code())
        }
    }
}

fn report(message: &str) {
    let _ = writeln!(std::io::stderr(), "backorderctl: error: {message}");
}
