//! The `shoal` binary: parses the command line and hands off to `shoal_nodes::run`.

use clap::Parser;

fn main() {
    let cli = shoal_nodes::cli::Cli::parse();
    if let Err(e) = shoal_nodes::run::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
