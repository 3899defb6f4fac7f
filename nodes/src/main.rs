//! The `shoal` binary.

fn main() {
    eprintln!("shoal: no commands yet; see README.md");
    std::process::exit(2);
}
