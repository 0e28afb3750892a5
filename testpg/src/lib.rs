//! Tests only: a private PostgreSQL cluster for a test run (the collector's storage suite, the
//! end-to-end replica tests): Debian's `postgresql` binaries, `initdb` in a temporary directory,
//! a free port on loopback, removed when dropped. PostgreSQL refuses to run as root: as root the
//! cluster belongs to the `postgres` user the package creates.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct TestPg {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    fsync: bool,
}

/// The newest installed PostgreSQL's binaries (Debian keeps each major version apart).
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|p| p.join("initdb").exists());
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        panic!("PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb): make test installs Debian's postgresql")
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The cluster the tests of one process share (each test in a database of its own), started
/// by the first test that asks (a static is never dropped: the watchdog removes it).
pub fn shared() -> &'static TestPg {
    static SHARED: std::sync::OnceLock<TestPg> = std::sync::OnceLock::new();
    SHARED.get_or_init(TestPg::start)
}

impl TestPg {
    /// A cluster for tests: `fsync=off`, since a test's data need not survive a power cut.
    pub fn start() -> TestPg {
        TestPg::start_with(false)
    }

    /// A cluster that syncs its commits to disk (`fsync`), as production runs, for benchmarks.
    pub fn start_durable() -> TestPg {
        TestPg::start_with(true)
    }

    fn start_with(fsync: bool) -> TestPg {
        let bin = bin_dir();
        // /proc/self belongs to the process's effective user.
        let as_postgres = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
        };
        let base =
            std::env::temp_dir().join(format!("tally-pg-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&base).expect("pg dir");
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&base)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown {} to postgres", base.display());
        }
        let pg = TestPg {
            dir: base,
            bin,
            port: free_port(),
            as_postgres,
            fsync,
        };
        let data = pg.dir.join("data");
        pg.run(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "tally",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        pg.watch();
        pg.start_again();
        pg
    }

    /// A watchdog that stops and removes the cluster once this process is gone, however it
    /// ends (killed, or exiting with the cluster in a static).
    fn watch(&self) {
        let stop = format!(
            "{} {} -D {} -m immediate stop",
            if self.as_postgres {
                "runuser -u postgres --"
            } else {
                ""
            },
            self.bin.join("pg_ctl").display(),
            self.dir.join("data").display()
        );
        let watch = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            dir = self.dir.display()
        );
        // Detached from the process group, so that it outlives the process it watches (and so
        // never waited for).
        use std::os::unix::process::CommandExt;
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .args(["-c", &watch])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .expect("the test cluster's watchdog");
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let out = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .current_dir(&self.dir)
                .output()
        } else {
            Command::new(&exe)
                .args(args)
                .current_dir(&self.dir)
                .output()
        }
        .unwrap_or_else(|e| panic!("{}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The URL of the database `name`, made empty unless there already.
    pub fn database_once(&self, name: &str) -> String {
        let mut admin = ::postgres::Client::connect(
            &format!("postgres://tally@127.0.0.1:{}/postgres", self.port),
            ::postgres::NoTls,
        )
        .expect("connect to the test cluster");
        let there = admin
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname = $1",
                &[&name],
            )
            .map(|r| r.get::<_, i64>(0) > 0)
            .expect("list databases");
        if !there {
            admin
                .batch_execute(&format!("CREATE DATABASE \"{name}\""))
                .expect("create database");
        }
        format!("postgres://tally@127.0.0.1:{}/{name}", self.port)
    }

    /// A new, empty database in the cluster, and its URL.
    pub fn database(&self, name: &str) -> String {
        let mut admin = ::postgres::Client::connect(
            &format!("postgres://tally@127.0.0.1:{}/postgres", self.port),
            ::postgres::NoTls,
        )
        .expect("connect to the test cluster");
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .expect("create database");
        format!("postgres://tally@127.0.0.1:{}/{name}", self.port)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stop the server (the database unreachable until [`TestPg::start_again`]).
    pub fn stop(&self) {
        let data = self.dir.join("data");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// Start the server (again, once stopped), on its port.
    pub fn start_again(&self) {
        let data = self.dir.join("data");
        let log = self.dir.join("log");
        let opts = self.options();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-l",
                &log.to_string_lossy(),
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Stop the server, cutting every connection, and start it again on the same port (its
    /// options kept): a database that is briefly unreachable.
    pub fn restart(&self, down: std::time::Duration) {
        let data = self.dir.join("data");
        let data = data.to_string_lossy();
        self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        std::thread::sleep(down);
        let log = self.dir.join("log");
        let log = log.to_string_lossy();
        let opts = self.options();
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-o", &opts, "-w", "-t", "60", "start",
            ],
        );
    }

    fn options(&self) -> String {
        format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync={} -c max_connections=200",
            self.port,
            self.dir.display(),
            if self.fsync { "on" } else { "off" }
        )
    }

    /// The whole of the database `name` as SQL (`pg_dump`), for the tests that search it.
    pub fn dump(&self, name: &str) -> String {
        let out = Command::new(self.bin.join("pg_dump"))
            .arg(format!("postgres://tally@127.0.0.1:{}/{name}", self.port))
            .output()
            .unwrap_or_else(|e| panic!("pg_dump: {e}"));
        assert!(
            out.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The one integer a query of the database at `url` gives (a count).
    pub fn value(url: &str, sql: &str) -> i64 {
        let mut c = ::postgres::Client::connect(url, ::postgres::NoTls).expect("connect");
        c.query_one(sql, &[]).expect("query").get(0)
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let exe = self.bin.join("pg_ctl");
        let args = ["-D", &data.to_string_lossy(), "-m", "immediate", "stop"].map(String::from);
        let _ = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(&args)
                .output()
        } else {
            Command::new(&exe).args(&args).output()
        };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
