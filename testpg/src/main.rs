//! `tally-testpg DATABASE...`: a private PostgreSQL cluster for the benchmarks (`make bench`),
//! syncing commits to disk as production does, with these databases made empty. Prints each
//! database's URL, one per line, then runs until its standard input closes (or it is killed),
//! and removes the cluster.

use std::io::Read;

fn main() {
    let pg = tally_testpg::TestPg::start_durable();
    for name in std::env::args().skip(1) {
        println!("{}", pg.database(&name));
    }
    // Stdout is a pipe: the URLs must reach the reader before this waits.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
}
