//! Tells the model cache (src/model/cache.rs) which tract it is built with: a cached model written
//! by another tract version may not read back the same, so that version is part of the cache key.
//! Cargo gives a crate its own version only, so the one in Cargo.lock is read here.

fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = std::fs::read_to_string("Cargo.lock").expect("Cargo.lock next to Cargo.toml (builds are --locked)");
    let version = lock
        .split("[[package]]")
        .find(|package| package.contains("\nname = \"tract-core\"\n"))
        .and_then(|package| package.lines().find_map(|line| line.strip_prefix("version = ")))
        .map(|quoted| quoted.trim_matches('"'))
        .expect("tract-core in Cargo.lock");
    println!("cargo:rustc-env=EDGEINFER_TRACT_VERSION={version}");
}
