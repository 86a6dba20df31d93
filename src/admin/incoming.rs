//! A package arriving in chunks over MQTT, resumable across dropped connections and restarts.
//!
//! ```text
//! incoming/<sha256>.part   the package; each chunk written at its offset
//! incoming/<sha256>.have   one byte per chunk, 1 once that chunk is on disk
//! ```
//!
//! The sender offers a package (sha256, size, chunk size), the board answers with the chunks it
//! lacks, the sender sends those. A board receives one package at a time: a new offer discards
//! an unfinished other one, so receiving never holds more than `admin.max_package_bytes` of disk.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The smallest and largest chunk a sender may use. The largest also bounds one admin message.
pub const MIN_CHUNK_BYTES: u64 = 1024;
pub const MAX_CHUNK_BYTES: u64 = 16 * 1024 * 1024;
/// Chunks per package: the `.have` file's size and the `missing` list's length are bounded by it.
const MAX_CHUNKS: u64 = 1 << 16;

/// What a `deploy` request says of the package it brings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub sha256: String,
    pub size: u64,
    pub chunk_bytes: u64,
}

/// Why a chunk or an offer is refused.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("sha256 must be 64 lowercase hex digits")]
    BadHash,
    #[error("the package is {size} bytes, over this board's admin.max_package_bytes ({limit})")]
    TooLarge { size: u64, limit: u64 },
    #[error("chunk_bytes must be {MIN_CHUNK_BYTES}..={MAX_CHUNK_BYTES}, with at most {MAX_CHUNKS} chunks")]
    BadChunking,
    #[error("no package {0} is being received here: send the deploy offer first")]
    NotOffered(String),
    #[error("chunk {index} is out of range: the package has {count}")]
    OutOfRange { index: u64, count: u64 },
    #[error("chunk {index} is {actual} bytes; {expected} expected")]
    WrongLength { index: u64, expected: u64, actual: usize },
    #[error("the package received does not match its sha256: corrupted or truncated in transit; send it again")]
    Corrupt,
    #[error("{path}: {source} (check admin.state_dir: space and permissions)")]
    Io { path: PathBuf, source: std::io::Error },
}

/// The package being received.
#[derive(Debug)]
pub struct Transfer {
    offer: Offer,
    part: PathBuf,
    have_path: PathBuf,
    have: Vec<bool>,
}

impl Offer {
    pub fn check(&self, limit: u64) -> Result<u64, TransferError> {
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(TransferError::BadHash);
        }
        if self.size > limit {
            return Err(TransferError::TooLarge { size: self.size, limit });
        }
        if !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&self.chunk_bytes) {
            return Err(TransferError::BadChunking);
        }
        let count = self.size.div_ceil(self.chunk_bytes).max(1);
        if count > MAX_CHUNKS {
            return Err(TransferError::BadChunking);
        }
        Ok(count)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TransferError + '_ {
    move |source| TransferError::Io { path: path.to_path_buf(), source }
}

impl Transfer {
    /// Starts receiving `offer` into `dir`, or resumes it where an earlier connection (or an
    /// earlier run of the daemon) left it. Other unfinished packages in `dir` are deleted.
    pub fn begin(dir: &Path, offer: Offer, limit: u64) -> Result<Transfer, TransferError> {
        let count = offer.check(limit)?;
        let part = dir.join(format!("{}.part", offer.sha256));
        let have_path = dir.join(format!("{}.have", offer.sha256));
        for entry in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
            let path = entry.path();
            if path != part && path != have_path {
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        let resumable = std::fs::metadata(&part).is_ok_and(|m| m.len() == offer.size)
            && std::fs::metadata(&have_path).is_ok_and(|m| m.len() == count);
        let have = if resumable {
            std::fs::read(&have_path).map_err(io(&have_path))?.iter().map(|&b| b == 1).collect()
        } else {
            File::create(&part).and_then(|f| f.set_len(offer.size)).map_err(io(&part))?;
            std::fs::write(&have_path, vec![0u8; count as usize]).map_err(io(&have_path))?;
            vec![false; count as usize]
        };
        Ok(Transfer { offer, part, have_path, have })
    }

    pub fn offer(&self) -> &Offer {
        &self.offer
    }

    /// The chunks not received yet.
    pub fn missing(&self) -> Vec<u64> {
        self.have.iter().enumerate().filter(|(_, &have)| !have).map(|(i, _)| i as u64).collect()
    }

    /// Writes chunk `index`; returns how many chunks are still missing.
    pub fn chunk(&mut self, index: u64, bytes: &[u8]) -> Result<usize, TransferError> {
        let count = self.have.len() as u64;
        if index >= count {
            return Err(TransferError::OutOfRange { index, count });
        }
        let offset = index * self.offer.chunk_bytes;
        let expected = self.offer.chunk_bytes.min(self.offer.size - offset);
        if bytes.len() as u64 != expected {
            return Err(TransferError::WrongLength { index, expected, actual: bytes.len() });
        }
        let part = std::fs::OpenOptions::new().write(true).open(&self.part).map_err(io(&self.part))?;
        part.write_all_at(bytes, offset).map_err(io(&self.part))?;
        part.sync_data().map_err(io(&self.part))?;
        let have = std::fs::OpenOptions::new().write(true).open(&self.have_path).map_err(io(&self.have_path))?;
        have.write_all_at(&[1], index).map_err(io(&self.have_path))?;
        self.have[index as usize] = true;
        Ok(self.have.iter().filter(|&&h| !h).count())
    }

    /// The whole package, once every chunk is in and its sha256 is the offer's; a package that
    /// does not match is deleted (the sender must start again).
    pub fn complete(&self) -> Result<Option<&Path>, TransferError> {
        if self.have.iter().any(|h| !h) {
            return Ok(None);
        }
        let digest = crate::package::file_sha256(&self.part).map_err(|e| match e {
            crate::package::PackageError::Io { path, source } => TransferError::Io { path, source },
            other => TransferError::Io { path: self.part.clone(), source: std::io::Error::other(other.to_string()) },
        })?;
        if digest != self.offer.sha256 {
            self.discard();
            return Err(TransferError::Corrupt);
        }
        Ok(Some(&self.part))
    }

    /// Deletes what was received.
    pub fn discard(&self) {
        let _ = std::fs::remove_file(&self.part);
        let _ = std::fs::remove_file(&self.have_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_resume_and_the_hash_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let package: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let offer = Offer { sha256: crate::package::sha256_hex(&package), size: 5000, chunk_bytes: 2048 };
        let mut transfer = Transfer::begin(dir.path(), offer.clone(), 1 << 20).unwrap();
        assert_eq!(transfer.missing(), [0, 1, 2]);
        assert_eq!(transfer.chunk(2, &package[4096..]).unwrap(), 2);
        assert!(matches!(transfer.chunk(0, &package[..100]), Err(TransferError::WrongLength { .. })));
        assert!(matches!(transfer.chunk(3, &package[..100]), Err(TransferError::OutOfRange { .. })));
        drop(transfer);
        let mut transfer = Transfer::begin(dir.path(), offer.clone(), 1 << 20).unwrap();
        assert_eq!(transfer.missing(), [0, 1], "resumed where it stopped");
        transfer.chunk(0, &package[..2048]).unwrap();
        assert!(transfer.complete().unwrap().is_none());
        transfer.chunk(1, &package[2048..4096]).unwrap();
        assert_eq!(std::fs::read(transfer.complete().unwrap().unwrap()).unwrap(), package);

        let mut bad = Transfer::begin(dir.path(), Offer { sha256: "0".repeat(64), ..offer.clone() }, 1 << 20).unwrap();
        assert!(!dir.path().join(format!("{}.part", offer.sha256)).exists(), "one package at a time");
        for (i, chunk) in package.chunks(2048).enumerate() {
            bad.chunk(i as u64, chunk).unwrap();
        }
        assert!(matches!(bad.complete(), Err(TransferError::Corrupt)));
        assert!(matches!(
            Transfer::begin(dir.path(), offer, 4000),
            Err(TransferError::TooLarge { size: 5000, limit: 4000 })
        ));
    }
}
