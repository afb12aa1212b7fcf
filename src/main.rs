//! The `loopspy` binary: parse the command line, run the command, map errors to exit codes.

use clap::Parser;

use loopspy::cli::{Cli, Command};
use loopspy::error::exit_code;

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Record(raw) => match raw.validate() {
            Err(message) => {
                eprintln!("loopspy: error: {message}");
                std::process::exit(exit_code::USAGE);
            }
            Ok(settings) => loopspy::record::run(settings),
        },
        Command::Dump(raw) => loopspy::dump::run(raw.validate()),
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
        Err(err) => {
            eprintln!("loopspy: error: {err}");
            err.exit_code()
        }
    };
    std::process::exit(code);
}
