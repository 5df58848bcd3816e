//! User tokens from a CSV file.
//!
//! The header names the columns: `x0` … `x7` (required), and optionally `charge`,
//! `mass`, `radius`, `strength` (defaults 1), `label` (fine ground truth) and `group`
//! (coarse ground truth). Labels may be any text; they are numbered in order of first
//! appearance. Every row is checked against the CDNA; an error names the line, the
//! column, the value and the limit.

use crate::model::cdna::Cdna;
use crate::model::commands::{CommandError, validate_token};
use crate::model::components::TokenSpec;
use crate::model::math::Vec8;
use crate::scenario::{GroundTruth, ScenarioData};
use std::collections::HashMap;
use std::path::Path;

/// Why an input file was refused.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be opened or read.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The header is wrong.
    #[error("{path}: line 1: {message}")]
    Header {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A row is malformed or out of range.
    #[error("{path}: line {line}, column {column} ({name}): {message}")]
    Cell {
        /// The file.
        path: String,
        /// 1-based line.
        line: u64,
        /// 1-based column.
        column: usize,
        /// Column name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A row has the wrong number of fields.
    #[error("{path}: line {line}: {message}")]
    Row {
        /// The file.
        path: String,
        /// 1-based line.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// No rows.
    #[error("{path}: no tokens (the file has a header but no rows)")]
    Empty {
        /// The file.
        path: String,
    },
}

const OPTIONAL: [&str; 6] = ["charge", "mass", "radius", "strength", "label", "group"];

/// Loads tokens (and ground truth, if the file has `label`/`group`) from a CSV file.
///
/// # Errors
/// [`InputError::Io`] when the file is a directory or cannot be opened; otherwise
/// whatever [`read_csv`] returns for its contents.
pub fn load_csv(path: &Path, cdna: &Cdna) -> Result<ScenarioData, InputError> {
    let p = path.display().to_string();
    if path.is_dir() {
        return Err(InputError::Io {
            path: p,
            message: "is a directory, not a CSV file".into(),
        });
    }
    let file = std::fs::File::open(path).map_err(|e| InputError::Io {
        path: p.clone(),
        message: e.to_string(),
    })?;
    read_csv(file, &p, cdna)
}

/// The longest line an input may have, in bytes: a token's row is ~150 bytes,
/// and a stream without line ends (`/dev/zero`) must not fill the memory.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// A reader that fails once a line runs past [`MAX_LINE_BYTES`].
struct LineCapped<R> {
    inner: R,
    line: usize,
}

impl<R> LineCapped<R> {
    fn new(inner: R) -> Self {
        Self { inner, line: 0 }
    }
}

impl<R: std::io::Read> std::io::Read for LineCapped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            self.line = if b == b'\n' || b == b'\r' {
                0
            } else {
                self.line + 1
            };
            if self.line > MAX_LINE_BYTES {
                return Err(std::io::Error::other(format!(
                    "a line is longer than {MAX_LINE_BYTES} bytes: not a token CSV"
                )));
            }
        }
        Ok(n)
    }
}

/// The xxh3-64 hash of an input file's bytes, read in chunks under the same
/// line cap as [`load_csv`] (the identity a WAL keeps of its input).
///
/// # Errors
/// [`InputError::Io`] when the file cannot be read, is a directory, or has a
/// line longer than [`MAX_LINE_BYTES`].
pub fn content_hash(path: &Path) -> Result<u64, InputError> {
    use std::io::Read as _;
    let err = |message: String| InputError::Io {
        path: path.display().to_string(),
        message,
    };
    if path.is_dir() {
        return Err(err("is a directory, not a CSV file".into()));
    }
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut reader = LineCapped::new(file);
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(|e| err(e.to_string()))?;
        if n == 0 {
            return Ok(hasher.digest());
        }
        hasher.update(&buf[..n]);
    }
}

/// [`load_csv`] over any reader; `origin` names it in errors.
///
/// # Errors
/// [`InputError::Header`] when the header cannot be read, has an unknown or repeated
/// column, or lacks one of `x0`…`x7`; [`InputError::Row`] when a row cannot be read
/// (malformed, wrong field count, a read error, or a line over [`MAX_LINE_BYTES`]);
/// [`InputError::Cell`] when a value is not a number or the CDNA refuses the token;
/// [`InputError::Empty`] when there are no rows.
pub fn read_csv(
    reader: impl std::io::Read,
    origin: &str,
    cdna: &Cdna,
) -> Result<ScenarioData, InputError> {
    let path = origin.to_string();
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(LineCapped::new(reader));
    let headers = rdr
        .headers()
        .map_err(|e| InputError::Header {
            path: path.clone(),
            message: e.to_string(),
        })?
        .clone();
    let mut cols: HashMap<String, usize> = HashMap::new();
    for (i, h) in headers.iter().enumerate() {
        let known = (0..8).any(|k| h == format!("x{k}")) || OPTIONAL.contains(&h);
        if !known {
            return Err(InputError::Header {
                path,
                message: format!(
                    "unknown column '{h}' (column {}); known: x0..x7, {}",
                    i + 1,
                    OPTIONAL.join(", ")
                ),
            });
        }
        if cols.insert(h.to_string(), i).is_some() {
            return Err(InputError::Header {
                path,
                message: format!("column '{h}' appears twice"),
            });
        }
    }
    let xs: Vec<usize> = (0..8)
        .map(|k| {
            cols.get(&format!("x{k}"))
                .copied()
                .ok_or_else(|| InputError::Header {
                    path: path.clone(),
                    message: format!("missing required column 'x{k}' (need x0..x7)"),
                })
        })
        .collect::<Result<_, _>>()?;
    let has_truth = cols.contains_key("label") || cols.contains_key("group");
    let mut data = ScenarioData::default();
    let mut truth = GroundTruth::default();
    let mut names: [HashMap<String, u32>; 2] = Default::default();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            InputError::Row {
                path: path.clone(),
                line,
                message: e.to_string(),
            }
        })?;
        let line = rec.position().map_or(0, |p| p.line());
        let cell_err = |col: usize, message: String| InputError::Cell {
            path: path.clone(),
            line,
            column: col + 1,
            name: headers.get(col).unwrap_or("?").to_string(),
            message,
        };
        let num = |col: usize| -> Result<f32, InputError> {
            let s = rec.get(col).unwrap_or("");
            s.parse::<f32>()
                .map_err(|_| cell_err(col, format!("'{s}' is not a number")))
        };
        let mut pos = [0.0f32; 8];
        for (k, &c) in xs.iter().enumerate() {
            pos[k] = num(c)?;
        }
        let mut spec = TokenSpec::at(Vec8::from_array(pos));
        let opt = |name: &str| cols.get(name).copied();
        if let Some(c) = opt("charge") {
            spec.charge = num(c)?;
        }
        if let Some(c) = opt("mass") {
            spec.mass = num(c)?;
        }
        if let Some(c) = opt("radius") {
            spec.radius = num(c)?;
        }
        if let Some(c) = opt("strength") {
            spec.strength = num(c)?;
        }
        if let Err(e) = validate_token(&spec, cdna) {
            let col = column_of(&e, &cols).unwrap_or(0);
            return Err(cell_err(col, e.to_string()));
        }
        if has_truth {
            for (slot, name) in ["label", "group"].iter().enumerate() {
                let v = opt(name).map_or("", |c| rec.get(c).unwrap_or(""));
                let next = names[slot].len() as u32;
                let id = *names[slot].entry(v.to_string()).or_insert(next);
                if slot == 0 {
                    truth.labels.push(id)
                } else {
                    truth.groups.push(id)
                }
            }
        }
        data.tokens.push(spec);
    }
    if data.tokens.is_empty() {
        return Err(InputError::Empty { path });
    }
    if has_truth {
        data.truth = Some(truth);
    }
    Ok(data)
}

fn column_of(e: &CommandError, cols: &HashMap<String, usize>) -> Option<usize> {
    let CommandError::InvalidValue { field, .. } = e else {
        return None;
    };
    if let Some(rest) = field.strip_prefix("position[") {
        let k = rest.chars().next()?.to_digit(10)?;
        return cols.get(&format!("x{k}")).copied();
    }
    cols.get(field.as_str()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<ScenarioData, InputError> {
        read_csv(text.as_bytes(), "in.csv", &Cdna::default())
    }

    #[test]
    fn reads_tokens_and_truth() {
        let d = read(
            "x0,x1,x2,x3,x4,x5,x6,x7,charge,label,group\n\
                      1,2,3,4,5,6,7,8,0.5,cat,animal\n\
                      0,0,0,0,0,0,0,0,-0.5,dog,animal\n\
                      0,0,0,0,0,0,0,1,1,car,thing\n",
        )
        .unwrap();
        assert_eq!(d.tokens.len(), 3);
        assert_eq!(d.tokens[0].position[7], 8.0);
        assert_eq!(d.tokens[1].charge, -0.5);
        assert_eq!(d.tokens[2].mass, 1.0);
        let t = d.truth.unwrap();
        assert_eq!(t.labels, vec![0, 1, 2]);
        assert_eq!(t.groups, vec![0, 0, 1]);
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = read("x0,x1,x2,x3,x4,x5,x6,x7\n0,0,0,0,0,0,0,0\n0,0,0,abc,0,0,0,0\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "in.csv: line 3, column 4 (x3): 'abc' is not a number"
        );
        let e = read("x0,x1,x2,x3,x4,x5,x6,x7,charge\n0,0,0,0,0,0,0,0,7\n").unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with("in.csv: line 2, column 9 (charge): charge = 7"),
            "{s}"
        );
        let e = read("x0,x1,x2,x3,x4,x5,x6,x7\n0,0,0,0,0,0,NaN,0\n").unwrap_err();
        assert!(e.to_string().contains("column 7 (x6)"), "{e}");
        let e = read("x0,x1,x2,x3,x4,x5,x6,x7\n0,0,0\n").unwrap_err();
        let long = format!(
            "x0,x1,x2,x3,x4,x5,x6,x7\n0,0,0,0,0,0,0,{}\n",
            "0".repeat(MAX_LINE_BYTES)
        );
        let too_long = read(&long).unwrap_err().to_string();
        assert!(
            too_long.contains("a line is longer than 65536 bytes"),
            "{too_long}"
        );
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn header_problems() {
        assert!(
            read("x0,x1\n1,2\n")
                .unwrap_err()
                .to_string()
                .contains("missing required column 'x2'")
        );
        assert!(
            read("x0,x1,x2,x3,x4,x5,x6,x7,color\n")
                .unwrap_err()
                .to_string()
                .contains("unknown column 'color'")
        );
        assert!(matches!(
            read("x0,x1,x2,x3,x4,x5,x6,x7\n"),
            Err(InputError::Empty { .. })
        ));
    }
}
