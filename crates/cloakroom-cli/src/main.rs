//! The `cloakroom` binary. Exit status: 0 ok, 1 error, 2 usage error.

fn main() -> std::process::ExitCode {
    cloakroom_cli::main_with(cloakroom::registry())
}
