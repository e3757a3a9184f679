//! `ember`: start a head, workers or a local cluster; inspect it; submit jobs; run a kernel
//! on a cluster GPU. The command line is [`ember::cli`]'s.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(ember::cli::main(std::env::args_os().collect()))
}
