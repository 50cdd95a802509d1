//! TensorBoard event files written from scratch: scalars as `Event` protocol buffers (the few
//! fields needed, encoded by hand) in TFRecord framing with masked CRC-32C, which the
//! `tensorboard` package reads (its `EventAccumulator`, and the TensorBoard server live).
//!
//! The messages (tensorboard/compat/proto/event.proto, summary.proto): `Event { double
//! wall_time = 1; int64 step = 2; oneof { string file_version = 3; Summary summary = 5;
//! SessionLog session_log = 7; } }`, `Summary { repeated Value value = 1; }`, `Value { string
//! tag = 1; float simple_value = 2; }`, `SessionLog { SessionStatus status = 1; }` (START = 1).
//! A record: the data's length (u64, little-endian), the masked CRC-32C of those 8 bytes, the
//! data, the masked CRC-32C of the data; mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8.
//! The first record of a file is an `Event` with `file_version = "brain.Event:2"`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Scalars wait at most this long before they are written.
const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// CRC-32C (Castagnoli, reflected polynomial 0x82f63b78), the checksum of TFRecords.
pub fn crc32c(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ 0x82f6_3b78
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    !data.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

/// The masked CRC-32C a TFRecord stores (a CRC of data holding CRCs is then not degenerate).
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c(data);
    // ((c >> 15) | (c << 17)) + 0xa282ead8, as TensorFlow writes it.
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// `data` framed as one TFRecord.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut r = Vec::with_capacity(data.len() + 16);
    r.extend_from_slice(&len);
    r.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    r.extend_from_slice(data);
    r.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    r
}

/// The records of a TFRecord file, each checked against its CRCs; an error names the record
/// and what is wrong. A record cut short at the end (a file being written) is an error too.
pub fn read_records(mut bytes: &[u8]) -> io::Result<Vec<&[u8]>> {
    let bad = |n: usize, what: &str| {
        io::Error::new(io::ErrorKind::InvalidData, format!("TFRecord {n}: {what}"))
    };
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let n = out.len();
        if bytes.len() < 12 {
            return Err(bad(n, "header cut short"));
        }
        let (len, rest) = bytes.split_at(8);
        let crc = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        if crc != masked_crc32c(len) {
            return Err(bad(n, "length CRC mismatch"));
        }
        let len = u64::from_le_bytes(len.try_into().expect("8 bytes"));
        let rest = &rest[4..];
        if (rest.len() as u64) < len.saturating_add(4) {
            return Err(bad(n, "data cut short"));
        }
        let (data, rest) = rest.split_at(len as usize);
        let crc = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        if crc != masked_crc32c(data) {
            return Err(bad(n, "data CRC mismatch"));
        }
        out.push(data);
        bytes = &rest[4..];
    }
    Ok(out)
}

/// Protocol-buffer encoding of the few fields written.
mod pb {
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// Field `field` with wire type `wire` (0 varint, 1 64-bit, 2 length-delimited, 5 32-bit).
    pub fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
        varint(out, (u64::from(field) << 3) | u64::from(wire));
    }

    pub fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
        key(out, field, 2);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
}

/// What an event holds besides its time and step.
enum What<'a> {
    FileVersion(&'a str),
    Scalars(&'a [(&'a str, f32)]),
    /// `SessionLog { status: START }`: a restart at this step.
    Start,
}

/// An `Event` message.
fn event(wall_time: f64, step: i64, what: What) -> Vec<u8> {
    let mut e = Vec::new();
    pb::key(&mut e, 1, 1);
    e.extend_from_slice(&wall_time.to_le_bytes());
    if step != 0 {
        pb::key(&mut e, 2, 0);
        // int64 is written as its two's complement (a negative step takes ten bytes).
        pb::varint(&mut e, step as u64);
    }
    match what {
        What::FileVersion(v) => pb::bytes(&mut e, 3, v.as_bytes()),
        What::Scalars(values) => {
            let mut summary = Vec::new();
            for (tag, v) in values {
                let mut value = Vec::new();
                pb::bytes(&mut value, 1, tag.as_bytes());
                pb::key(&mut value, 2, 5);
                value.extend_from_slice(&v.to_le_bytes());
                pb::bytes(&mut summary, 1, &value);
            }
            pb::bytes(&mut e, 5, &summary);
        }
        What::Start => {
            let mut log = Vec::new();
            pb::key(&mut log, 1, 0);
            pb::varint(&mut log, 1);
            pb::bytes(&mut e, 7, &log);
        }
    }
    e
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One TensorBoard event file, written as events come: scalars buffered for at most half a
/// second (TensorBoard reads the file while it grows), everything else at once.
pub struct EventWriter {
    path: PathBuf,
    file: std::fs::File,
    buf: Vec<u8>,
    flushed: Instant,
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<unix seconds>.<host>` (the host name, or "engram";
    /// `.1`, `.2`, ... appended while the name is taken), with its `file_version` record.
    /// One folder per run under TensorBoard's log folder makes one run in TensorBoard.
    pub fn create(dir: &Path) -> io::Result<EventWriter> {
        let at = |e: io::Error, p: &Path| io::Error::new(e.kind(), format!("{}: {e}", p.display()));
        std::fs::create_dir_all(dir).map_err(|e| at(e, dir))?;
        let secs = now() as u64;
        let base = format!("events.out.tfevents.{secs}.{}", host());
        let mut n = 0;
        let (path, file) = loop {
            let name = match n {
                0 => base.clone(),
                n => format!("{base}.{n}"),
            };
            let path = dir.join(name);
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(f) => break (path, f),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(at(e, &path)),
            }
        };
        let mut w = EventWriter {
            path,
            file,
            buf: Vec::new(),
            flushed: Instant::now(),
        };
        w.push(0, What::FileVersion("brain.Event:2"));
        w.flush()?;
        Ok(w)
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Scalars `(tag, value)` at `step`, in one event.
    pub fn scalars(&mut self, step: i64, values: &[(&str, f32)]) -> io::Result<()> {
        self.push(step, What::Scalars(values));
        match self.flushed.elapsed() >= FLUSH_EVERY {
            true => self.flush(),
            false => Ok(()),
        }
    }

    /// Marks a restart at `step` (a resumed run): TensorBoard then drops the scalars it read
    /// at `step` and later, which a killed run wrote for the work the resumed run redoes.
    pub fn restart(&mut self, step: i64) -> io::Result<()> {
        self.push(step, What::Start);
        self.flush()
    }

    /// Writes what waits.
    pub fn flush(&mut self) -> io::Result<()> {
        self.flushed = Instant::now();
        let r = self.file.write_all(&self.buf);
        self.buf.clear();
        r.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))
    }

    fn push(&mut self, step: i64, what: What) {
        self.buf.extend(record(&event(now(), step, what)));
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            let _ = self.flush();
        }
    }
}

/// The host's name as a file name part, or "engram".
fn host() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let h = h.trim();
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    match !h.is_empty() && h.len() <= 64 && h.chars().all(plain) && !h.starts_with('.') {
        true => h.to_string(),
        false => "engram".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The CRC-32C check value and the iSCSI vectors (RFC 3720, B.4); the mask as
    /// TensorBoard's own `masked_crc32c` computes it (values taken from it).
    #[test]
    fn crc32c_matches_the_known_vectors() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let up: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&up), 0x46dd_794e);
        assert_eq!(crc32c(b""), 0);
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn varints_are_little_endian_groups_of_seven_bits() {
        for (v, want) in [
            (0u64, "00"),
            (1, "01"),
            (127, "7f"),
            (128, "8001"),
            (300, "ac02"),
            (u64::MAX, "ffffffffffffffffff01"),
        ] {
            let mut out = Vec::new();
            pb::varint(&mut out, v);
            assert_eq!(hex(&out), want, "{v}");
        }
    }

    /// Events encode byte for byte as the `tensorboard` package's protocol buffers serialize
    /// them (bytes taken from `Event(...).SerializeToString()`), and their records carry the
    /// CRCs TensorBoard computes.
    #[test]
    fn events_encode_as_tensorboard_serializes_them() {
        let loss = event(1.5, 3, What::Scalars(&[("loss", 0.25)]));
        assert_eq!(
            hex(&loss),
            "09000000000000f83f10032a0d0a0b0a046c6f7373150000803e"
        );
        let version = event(1.5, 0, What::FileVersion("brain.Event:2"));
        assert_eq!(
            hex(&version),
            "09000000000000f83f1a0d627261696e2e4576656e743a32"
        );
        let start = event(2.0, -1, What::Start);
        assert_eq!(
            hex(&start),
            "09000000000000004010ffffffffffffffffff013a020801"
        );
        let r = record(&loss);
        assert_eq!(r.len(), loss.len() + 16);
        assert_eq!(&r[..8], &(loss.len() as u64).to_le_bytes());
        assert_eq!(
            u32::from_le_bytes(r[8..12].try_into().unwrap()),
            0x2dd8_9b12
        );
        assert_eq!(
            u32::from_le_bytes(r[r.len() - 4..].try_into().unwrap()),
            0x55b2_54d0
        );
    }

    /// A written file reads back record by record, starting with its file version; a flipped
    /// byte or a cut record is caught.
    #[test]
    fn a_written_file_reads_back_and_damage_is_caught() {
        let d = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(d.path()).unwrap();
        w.scalars(1, &[("loss", 0.5)]).unwrap();
        w.scalars(2, &[("loss", 0.25), ("accuracy/mean", 75.0)])
            .unwrap();
        w.restart(2).unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        let second = EventWriter::create(d.path()).unwrap();
        assert_ne!(second.path(), path, "a taken name is not reused");

        let bytes = std::fs::read(&path).unwrap();
        let recs = read_records(&bytes).unwrap();
        assert_eq!(recs.len(), 4);
        assert!(hex(recs[0]).ends_with(&hex(b"brain.Event:2")));
        // The wall time leads each event; the rest is as encoded.
        let tail = |r: &[u8]| r[9..].to_vec();
        assert_eq!(
            tail(recs[1]),
            tail(&event(0.0, 1, What::Scalars(&[("loss", 0.5)])))
        );
        assert_eq!(
            tail(recs[2]),
            tail(&event(
                0.0,
                2,
                What::Scalars(&[("loss", 0.25), ("accuracy/mean", 75.0)])
            ))
        );
        assert_eq!(tail(recs[3]), tail(&event(0.0, 2, What::Start)));

        let mut bad = bytes.clone();
        let k = bad.len() - 6;
        bad[k] ^= 1;
        let e = read_records(&bad).unwrap_err().to_string();
        assert!(e.contains("TFRecord 3: data CRC mismatch"), "{e}");
        let e = read_records(&bytes[..bytes.len() - 2])
            .unwrap_err()
            .to_string();
        assert!(e.contains("cut short"), "{e}");
    }
}
