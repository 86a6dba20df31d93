//! Model packages: a signed tar of one model directory, what `edgeinfer package` makes and a
//! board's `deploy` admin operation installs.
//!
//! ```text
//! edgeinfer-package.json   the manifest: format, model name, version, and each file's size and sha256
//! edgeinfer-package.sig    {"key": <public key, hex>, "signature": <ed25519 over the manifest's bytes, hex>}
//! model.onnx, model.toml, labels.txt, golden.json, ...   the model's files, flat
//! ```
//!
//! The tar is plain (not compressed), so what unpacking writes is bounded by the package's size.
//! The manifest comes first and is checked before any file is written: an unsigned, tampered or
//! foreign package writes nothing. Names are plain file names (no directories, no `..`), so no
//! package can write outside the directory it is unpacked into.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use crate::model::repository::is_valid_model_name;

/// The manifest's name inside the tar.
pub const MANIFEST: &str = "edgeinfer-package.json";
/// The signature's name inside the tar.
pub const SIGNATURE: &str = "edgeinfer-package.sig";
/// A package's own checks: requests and the outputs they must give (see `model::golden`).
pub const GOLDEN: &str = "golden.json";
/// The manifest format this build reads and writes.
const FORMAT: u32 = 1;
/// A manifest or signature larger than this is not one.
const MAX_HEADER_BYTES: u64 = 1024 * 1024;
/// Files a package may hold.
const MAX_FILES: usize = 64;

const PRIVATE_TAG: &str = "edgeinfer-ed25519-private";
const PUBLIC_TAG: &str = "edgeinfer-ed25519";

/// What a package says it holds; signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub version: String,
    pub files: Vec<FileEntry>,
}

/// One file of a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Signature {
    key: String,
    signature: String,
}

/// Why a package or key is refused; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}: not an edgeinfer key file (edgeinfer keygen writes them)")]
    NotAKey(PathBuf),
    #[error("the package is not a readable tar ({0}); it may be truncated or not a package")]
    Tar(#[source] std::io::Error),
    #[error("the package does not start with {MANIFEST} and {SIGNATURE}; make it with edgeinfer package")]
    NoManifest,
    #[error("{MANIFEST} is not valid: {0}")]
    BadManifest(String),
    #[error("the package is signed by key {0}, which is not in admin.trusted_keys")]
    UntrustedKey(String),
    #[error("the package's signature does not match its manifest: it was altered after signing")]
    BadSignature,
    #[error("the package holds \"{0}\", which its manifest does not list")]
    Unlisted(String),
    #[error("file \"{path}\" is {actual} bytes; the manifest says {expected}")]
    WrongSize { path: String, expected: u64, actual: u64 },
    #[error("file \"{0}\" does not match its sha256 in the manifest: the package is corrupt")]
    WrongHash(String),
    #[error("file \"{0}\" is listed in the manifest but missing from the package (truncated?)")]
    Missing(String),
    #[error("{dir}: {message}")]
    BadModelDir { dir: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PackageError + '_ {
    move |source| PackageError::Io { path: path.to_path_buf(), source }
}

/// A signing key (its private half). Kept by whoever deploys, never on the boards.
pub struct SigningKey(Ed25519KeyPair);

/// A trusted public key, as listed in `admin.trusted_keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(Vec<u8>);

impl SigningKey {
    /// Makes a key pair and writes it: `path` (private, mode 0600) and `path.pub`.
    pub fn generate(path: &Path) -> Result<PublicKey, PackageError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("the system's random source works");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("a key ring just made");
        let public = PublicKey(pair.public_key().as_ref().to_vec());
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io(path))?
        };
        writeln!(file, "{PRIVATE_TAG} {}", hex::encode(pkcs8.as_ref())).map_err(io(path))?;
        let public_path = public_path(path);
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).open(&public_path).map_err(io(&public_path))?;
        writeln!(file, "{PUBLIC_TAG} {}", public.to_hex()).map_err(io(&public_path))?;
        Ok(public)
    }

    pub fn read(path: &Path) -> Result<SigningKey, PackageError> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let pkcs8 = tagged_hex(&text, PRIVATE_TAG).ok_or_else(|| PackageError::NotAKey(path.to_path_buf()))?;
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| PackageError::NotAKey(path.to_path_buf()))?;
        Ok(SigningKey(pair))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.public_key().as_ref().to_vec())
    }
}

/// Where `edgeinfer keygen KEY` puts the public half: `KEY.pub`.
pub fn public_path(private: &Path) -> PathBuf {
    let mut name = private.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

impl PublicKey {
    pub fn read(path: &Path) -> Result<PublicKey, PackageError> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        tagged_hex(&text, PUBLIC_TAG)
            .filter(|key| key.len() == 32)
            .map(PublicKey)
            .ok_or_else(|| PackageError::NotAKey(path.to_path_buf()))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

/// The hex after `tag ` on the first line of a key file.
fn tagged_hex(text: &str, tag: &str) -> Option<Vec<u8>> {
    let (found, value) = text.lines().next()?.split_once(' ')?;
    (found == tag).then(|| hex::decode(value.trim()).ok()).flatten()
}

/// Whether `name` may be a file of a package: a plain, visible file name.
fn is_valid_file_name(name: &str) -> bool {
    is_valid_model_name(name) && name != MANIFEST && name != SIGNATURE
}

impl Manifest {
    fn check(&self) -> Result<(), PackageError> {
        let bad = |m: String| Err(PackageError::BadManifest(m));
        if self.format != FORMAT {
            return bad(format!("format {} is not {FORMAT}; use an edgeinfer of the same release", self.format));
        }
        if !is_valid_model_name(&self.name) {
            return bad(format!("\"{}\" is not a valid model name", self.name.escape_debug()));
        }
        if !is_valid_model_name(&self.version) {
            return bad(format!(
                "version \"{}\" must be letters, digits, '_', '-' and '.', at most 64",
                self.version.escape_debug()
            ));
        }
        if self.files.len() > MAX_FILES {
            return bad(format!("{} files; at most {MAX_FILES}", self.files.len()));
        }
        let mut seen = std::collections::HashSet::new();
        for file in &self.files {
            if !is_valid_file_name(&file.path) {
                return bad(format!("\"{}\" is not a plain file name", file.path.escape_debug()));
            }
            if !seen.insert(file.path.as_str()) {
                return bad(format!("\"{}\" is listed twice", file.path));
            }
            if file.sha256.len() != 64 || hex::decode(&file.sha256).is_err() {
                return bad(format!("the sha256 of \"{}\" is not 64 hex digits", file.path));
            }
        }
        if !seen.contains("model.onnx") {
            return bad("there is no model.onnx".into());
        }
        Ok(())
    }
}

/// The sha256 of some bytes, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// The sha256 of a file, read in pieces.
pub fn file_sha256(path: &Path) -> Result<String, PackageError> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0; 1 << 16];
    loop {
        let n = file.read(&mut buffer).map_err(io(path))?;
        if n == 0 {
            break;
        }
        context.update(&buffer[..n]);
    }
    Ok(hex::encode(context.finish()))
}

/// Makes a package of every regular file directly in `dir` (sub-directories and hidden files are
/// left out), as model `name` at `version`, signed with `key`; `extra` files (a `golden.json`
/// made on the spot, say) are added or replace the directory's. Returns the tar's bytes.
pub fn make(
    dir: &Path,
    name: &str,
    version: &str,
    key: &SigningKey,
    extra: &[(String, Vec<u8>)],
) -> Result<Vec<u8>, PackageError> {
    let bad_dir = |message: String| PackageError::BadModelDir { dir: dir.to_path_buf(), message };
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        // Follows symlinks: the pack's model directories link their ONNX files.
        if !entry.path().is_file() || file_name.starts_with('.') || extra.iter().any(|(n, _)| *n == file_name) {
            continue;
        }
        if !is_valid_file_name(&file_name) {
            return Err(bad_dir(format!("\"{file_name}\" cannot go in a package: use a plain file name")));
        }
        files.push((file_name, std::fs::read(entry.path()).map_err(io(&entry.path()))?));
    }
    files.extend(extra.iter().cloned());
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let manifest = Manifest {
        format: FORMAT,
        name: name.to_string(),
        version: version.to_string(),
        files: files
            .iter()
            .map(|(path, bytes)| FileEntry { path: path.clone(), size: bytes.len() as u64, sha256: sha256_hex(bytes) })
            .collect(),
    };
    manifest.check().map_err(|e| bad_dir(e.to_string()))?;
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
    let signature = Signature { key: key.public().to_hex(), signature: hex::encode(key.0.sign(&manifest_bytes)) };
    let signature_bytes = serde_json::to_vec(&signature).expect("a signature serialises");

    let mut tar = tar::Builder::new(Vec::new());
    for (path, bytes) in [(MANIFEST, manifest_bytes.as_slice()), (SIGNATURE, &signature_bytes)]
        .into_iter()
        .chain(files.iter().map(|(p, b)| (p.as_str(), b.as_slice())))
    {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        tar.append_data(&mut header, path, bytes).map_err(PackageError::Tar)?;
    }
    tar.into_inner().map_err(PackageError::Tar)
}

/// Checks the package at `package` against `trusted` keys and writes its files into `into` (an
/// empty directory the caller owns and removes on failure). Nothing is written unless the
/// manifest is signed by a trusted key; every file must match the manifest.
pub fn unpack(package: &Path, trusted: &[PublicKey], into: &Path) -> Result<Manifest, PackageError> {
    let file = std::fs::File::open(package).map_err(io(package))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut entries = archive.entries().map_err(PackageError::Tar)?;
    let mut header_entry = |expected: &str| -> Result<Vec<u8>, PackageError> {
        let mut entry = entries.next().ok_or(PackageError::NoManifest)?.map_err(PackageError::Tar)?;
        let path = entry.path().map_err(PackageError::Tar)?.to_string_lossy().into_owned();
        if path != expected || entry.size() > MAX_HEADER_BYTES {
            return Err(PackageError::NoManifest);
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(PackageError::Tar)?;
        Ok(bytes)
    };
    let manifest_bytes = header_entry(MANIFEST)?;
    let signature_bytes = header_entry(SIGNATURE)?;
    let signature: Signature =
        serde_json::from_slice(&signature_bytes).map_err(|e| PackageError::BadManifest(format!("{SIGNATURE}: {e}")))?;
    let key = hex::decode(&signature.key)
        .map_err(|_| PackageError::UntrustedKey(signature.key.escape_debug().to_string()))?;
    if !trusted.iter().any(|t| t.0 == key) {
        return Err(PackageError::UntrustedKey(signature.key.chars().take(64).collect()));
    }
    let signed = hex::decode(&signature.signature).map_err(|_| PackageError::BadSignature)?;
    UnparsedPublicKey::new(&ED25519, &key).verify(&manifest_bytes, &signed).map_err(|_| PackageError::BadSignature)?;
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| PackageError::BadManifest(e.to_string()))?;
    manifest.check()?;

    let mut written = std::collections::HashSet::new();
    for entry in entries {
        let mut entry = entry.map_err(PackageError::Tar)?;
        let path = entry.path().map_err(PackageError::Tar)?.to_string_lossy().into_owned();
        let listed = manifest
            .files
            .iter()
            .find(|f| f.path == path)
            .filter(|_| entry.header().entry_type() == tar::EntryType::Regular && !written.contains(&path))
            .ok_or_else(|| {
                PackageError::Unlisted(path.chars().take(200).collect::<String>().escape_debug().to_string())
            })?;
        if entry.size() != listed.size {
            return Err(PackageError::WrongSize { path, expected: listed.size, actual: entry.size() });
        }
        let target = into.join(&listed.path);
        let mut out = std::fs::OpenOptions::new().write(true).create_new(true).open(&target).map_err(io(&target))?;
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buffer = vec![0; 1 << 16];
        let mut size = 0u64;
        loop {
            let n = entry.read(&mut buffer).map_err(PackageError::Tar)?;
            if n == 0 {
                break;
            }
            size += n as u64;
            context.update(&buffer[..n]);
            out.write_all(&buffer[..n]).map_err(io(&target))?;
        }
        if size != listed.size {
            return Err(PackageError::Missing(path));
        }
        if hex::encode(context.finish()) != listed.sha256 {
            return Err(PackageError::WrongHash(path));
        }
        out.sync_all().map_err(io(&target))?;
        written.insert(path);
    }
    if let Some(missing) = manifest.files.iter().find(|f| !written.contains(&f.path)) {
        return Err(PackageError::Missing(missing.path.clone()));
    }
    Ok(manifest)
}

/// Reads a package's manifest without checking its signature: what the deploying side shows.
pub fn peek(package: &[u8]) -> Result<Manifest, PackageError> {
    let mut archive = tar::Archive::new(package);
    let mut entries = archive.entries().map_err(PackageError::Tar)?;
    let mut entry = entries.next().ok_or(PackageError::NoManifest)?.map_err(PackageError::Tar)?;
    if entry.path().map_err(PackageError::Tar)?.to_string_lossy() != MANIFEST {
        return Err(PackageError::NoManifest);
    }
    let mut bytes = Vec::new();
    entry.by_ref().take(MAX_HEADER_BYTES).read_to_end(&mut bytes).map_err(PackageError::Tar)?;
    serde_json::from_slice(&bytes).map_err(|e| PackageError::BadManifest(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.onnx"), b"not really onnx").unwrap();
        std::fs::write(dir.path().join("labels.txt"), b"a\nb\n").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        dir
    }

    fn key(dir: &Path) -> (SigningKey, PublicKey) {
        let path = dir.join("key");
        let public = SigningKey::generate(&path).unwrap();
        assert_eq!(PublicKey::read(&public_path(&path)).unwrap(), public);
        (SigningKey::read(&path).unwrap(), public)
    }

    #[test]
    fn a_signed_package_unpacks_to_its_files() {
        let (model, keys, out) = (model_dir(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (key, public) = key(keys.path());
        let bytes = make(model.path(), "m", "2", &key, &[]).unwrap();
        let package = keys.path().join("m.tar");
        std::fs::write(&package, &bytes).unwrap();
        let manifest = unpack(&package, &[public], out.path()).unwrap();
        assert_eq!(peek(&bytes).unwrap(), manifest);
        assert_eq!((manifest.name.as_str(), manifest.version.as_str()), ("m", "2"));
        assert_eq!(std::fs::read(out.path().join("labels.txt")).unwrap(), b"a\nb\n");
        assert!(!out.path().join("sub").exists());
    }

    #[test]
    fn foreign_altered_and_truncated_packages_are_refused() {
        let (model, keys) = (model_dir(), tempfile::tempdir().unwrap());
        let (key, public) = key(keys.path());
        let other = SigningKey::generate(&keys.path().join("other")).unwrap();
        let bytes = make(model.path(), "m", "2", &key, &[]).unwrap();
        let package = keys.path().join("m.tar");
        let attempt = |bytes: &[u8], trusted: &[PublicKey]| {
            std::fs::write(&package, bytes).unwrap();
            let out = tempfile::tempdir().unwrap();
            let result = unpack(&package, trusted, out.path());
            (result, std::fs::read_dir(out.path()).unwrap().count())
        };
        let (result, written) = attempt(&bytes, &[other]);
        assert!(matches!(result, Err(PackageError::UntrustedKey(_))), "{result:?}");
        assert_eq!(written, 0, "nothing written for an untrusted key");

        let mut altered = bytes.clone();
        let at = altered.windows(4).position(|w| w == b"\"2\",").expect("the version in the manifest");
        altered[at + 1] = b'3';
        assert!(matches!(attempt(&altered, std::slice::from_ref(&public)).0, Err(PackageError::BadSignature)));

        let mut corrupt = bytes.clone();
        let at = corrupt.windows(15).position(|w| w == b"not really onnx").unwrap();
        corrupt[at] = b'N';
        assert!(matches!(attempt(&corrupt, std::slice::from_ref(&public)).0, Err(PackageError::WrongHash(_))));

        let (result, _) = attempt(&bytes[..bytes.len() - 1536], std::slice::from_ref(&public));
        assert!(matches!(result, Err(PackageError::Missing(_) | PackageError::Tar(_))), "{result:?}");
    }

    #[test]
    fn key_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pub");
        std::fs::write(&path, "ssh-ed25519 AAAA\n").unwrap();
        assert!(matches!(PublicKey::read(&path), Err(PackageError::NotAKey(_))));
        std::fs::write(&path, format!("{PUBLIC_TAG} abcd\n")).unwrap();
        assert!(matches!(PublicKey::read(&path), Err(PackageError::NotAKey(_))), "a key of the wrong length");
    }
}
