//! Embeds Chart.js (the dashboard's npm dependency) into the binary, so the collector is one
//! file. `make build` installs it with `npm ci` in collector/dashboard.

fn main() {
    let src = std::path::Path::new("dashboard/node_modules/chart.js/dist/chart.umd.min.js");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-changed=dashboard/package-lock.json");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default())
        .join("chart.umd.js");
    if let Err(e) = std::fs::copy(src, &out) {
        panic!(
            "{}: {e}. The dashboard's Chart.js is missing: run `make build` \
             (or `npm ci` in collector/dashboard) first",
            src.display()
        );
    }
}
