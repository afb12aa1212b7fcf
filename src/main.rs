//! The `loopspy` binary: parse the command line, run the command, map errors to exit codes.

use clap::Parser;

use loopspy::cli::{Cli, Command};
use loopspy::error::exit_code;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => usage_error(err),
    };
    let result = match cli.command {
        Command::Record(raw) => match raw.validate() {
            Err(message) => {
                eprintln!("loopspy: error: {message}");
                std::process::exit(exit_code::USAGE);
            }
            Ok(settings) => loopspy::record::run(settings),
        },
        Command::Dump(raw) => loopspy::dump::run(raw.validate()),
        Command::Tasks(raw) => match raw.validate() {
            Err(message) => {
                eprintln!("loopspy: error: {message}");
                std::process::exit(exit_code::USAGE);
            }
            Ok(settings) => loopspy::tasks_cmd::run(settings),
        },
        Command::Agent(raw) => match raw.validate() {
            Err(message) => {
                eprintln!("loopspy: error: {message}");
                std::process::exit(exit_code::USAGE);
            }
            Ok(settings) => loopspy::agent::run(settings),
        },
        Command::Top(raw) => match raw.validate() {
            Err(message) => {
                eprintln!("loopspy: error: {message}");
                std::process::exit(exit_code::USAGE);
            }
            Ok(settings) => loopspy::view::run(settings),
        },
    };
    let code = match result {
        Ok(code) => code,
        // The launched program's own ending is news, not loopspy's error.
        Err(err @ loopspy::error::LoopspyError::LaunchedProgramExited { .. }) => {
            eprintln!("loopspy: {err}");
            err.exit_code()
        }
        Err(err) => {
            eprintln!("loopspy: error: {err}");
            err.exit_code()
        }
    };
    std::process::exit(code);
}

/// clap's own errors read like every other: one `loopspy: error:` line with what to do, exit 2
/// (help and version print as clap prints them, exit 0).
fn usage_error(err: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        err.exit();
    }
    let rendered = err.render().to_string();
    let first = rendered
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ");
    eprintln!("loopspy: error: {first} (see `loopspy --help`, or `loopspy COMMAND --help`)");
    std::process::exit(exit_code::USAGE);
}
