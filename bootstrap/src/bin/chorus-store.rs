//! `chorus-store --addr 0.0.0.0:29500`: a standalone store server that outlives the workers.

use std::io::Write;
use std::net::SocketAddr;

use chorus_bootstrap::StoreServer;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "chorus-store",
    version,
    about = "Standalone chorus rendezvous store"
)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the real one is printed).
    #[arg(long, default_value = "0.0.0.0:29500")]
    addr: SocketAddr,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let server = match StoreServer::bind(args.addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chorus-store: {e}");
            std::process::exit(1);
        }
    };
    println!("chorus-store listening on {}", server.local_addr());
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}
