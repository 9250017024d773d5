//! What a file is, from its first bytes: enough to tell a user who passed the wrong file what
//! they passed (a text file, JSON, a safetensors shard, a PyTorch checkpoint, ...) instead of
//! "bad magic".

use std::io::Read;
use std::path::Path;

/// The kinds of file a user plausibly hands to a tool that wants a GGUF file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Gguf,
    Folder,
    Empty,
    Safetensors,
    Json,
    /// A zip archive: PyTorch's `.bin`/`.pt` checkpoints are zip files since torch 1.6.
    Zip,
    /// A Python pickle (older PyTorch checkpoints).
    Pickle,
    Gzip,
    Text,
    Binary,
}

impl FileKind {
    /// A phrase for "it looks like ...".
    pub fn description(self) -> &'static str {
        match self {
            FileKind::Gguf => "a GGUF file",
            FileKind::Folder => "a folder",
            FileKind::Empty => "an empty file",
            FileKind::Safetensors => "a safetensors file (one file of a Hugging Face checkpoint)",
            FileKind::Json => "a JSON document",
            FileKind::Zip => "a zip archive (a PyTorch .bin/.pt checkpoint is one)",
            FileKind::Pickle => "a Python pickle (an old-style PyTorch checkpoint)",
            FileKind::Gzip => "a gzip-compressed file",
            FileKind::Text => "a text file",
            FileKind::Binary => "binary data of an unknown format",
        }
    }
}

/// Classifies the file at `path` by its first 4 KiB.
pub fn sniff(path: &Path) -> std::io::Result<FileKind> {
    if std::fs::metadata(path)?.is_dir() {
        return Ok(FileKind::Folder);
    }
    let mut head = Vec::with_capacity(4096);
    std::fs::File::open(path)?
        .take(4096)
        .read_to_end(&mut head)?;
    Ok(classify(&head))
}

/// Classifies a file from its first bytes.
pub fn classify(head: &[u8]) -> FileKind {
    if head.is_empty() {
        return FileKind::Empty;
    }
    if head.starts_with(b"GGUF") {
        return FileKind::Gguf;
    }
    // safetensors: an 8-byte little-endian header length, then the JSON header.
    if head.len() > 9 && head[8] == b'{' {
        let mut len = [0u8; 8];
        len.copy_from_slice(&head[..8]);
        if (2..100 << 20).contains(&u64::from_le_bytes(len)) {
            return FileKind::Safetensors;
        }
    }
    if head.starts_with(b"PK\x03\x04") {
        return FileKind::Zip;
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        return FileKind::Gzip;
    }
    if head[0] == 0x80 && head.get(1).is_some_and(|v| (2..=5).contains(v)) {
        return FileKind::Pickle;
    }
    // Text: valid UTF-8 (a multi-byte character may be cut at the 4 KiB boundary) without NULs.
    let text = match std::str::from_utf8(head) {
        Ok(t) => Some(t),
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&head[..e.valid_up_to()]).ok(),
        Err(_) => None,
    };
    match text {
        Some(t) if !t.contains('\0') => {
            if matches!(t.trim_start().chars().next(), Some('{' | '[')) {
                FileKind::Json
            } else {
                FileKind::Text
            }
        }
        _ => FileKind::Binary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let mut st = 20u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{\"__metadata__\":{}} ");
        let cases: [(&[u8], FileKind); 10] = [
            (b"", FileKind::Empty),
            (b"GGUF\x03\0\0\0", FileKind::Gguf),
            (&st, FileKind::Safetensors),
            (b"  {\"a\": 1}", FileKind::Json),
            (b"[1, 2]", FileKind::Json),
            (b"PK\x03\x04rest", FileKind::Zip),
            (b"\x80\x02}q\0", FileKind::Pickle),
            (b"\x1f\x8b\x08", FileKind::Gzip),
            (b"checkpoint-12\n", FileKind::Text),
            (b"\xff\xfe\0\x01", FileKind::Binary),
        ];
        for (bytes, kind) in cases {
            assert_eq!(classify(bytes), kind, "{bytes:?}");
        }
    }
}
