fn main() {
    std::process::exit(plumb::cli::main());
}
