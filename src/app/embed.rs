//! Embeddings in: a data set of any dimension `D ≥ 8` brought into the engine's
//! 8D space, at a length scale taken from the data.
//!
//! 1. **Reduction**: principal component analysis (PCA). The data are centred,
//!    their `D × D` covariance is diagonalised (nalgebra's `SymmetricEigen`),
//!    and every point is projected on the 8 leading eigenvectors. Each
//!    eigenvector's sign is fixed (its largest-magnitude component positive),
//!    so the result does not depend on the eigensolver's choice: same input,
//!    same points. The explained variance ratio of each component is reported.
//! 2. **Scale**: what the engine sees is distances relative to the field
//!    radius `R` (the pair cutoff), and the same data at another unit must give
//!    the same world. The scale is taken from the distribution of
//!    k-nearest-neighbour distances (as density-based clusterers such as
//!    DBSCAN/HDBSCAN pick their length scale): the median, over up to
//!    [`SCALE_SAMPLE`] evenly spaced points, of the distance to the
//!    [`KNN_K`]-th nearest neighbour in the reduced 8D space is mapped to
//!    [`KNN_TARGET`]` · R`. A multiplied input gives the same points, up to
//!    rounding. The scale chosen is reported and can be overridden.
//!
//! Cost: `O(n·D²)` for the covariance, `O(D³)` for the eigensolver, and
//! `O(min(n, 1000) · n)` distances for the scale (brute force, in parallel):
//! about a second at `n` = 1M. The whole matrix is held in memory as `f64`.

use crate::model::components::TokenSpec;
use crate::model::math::Vec8;
use crate::scenario::Generated;
use rayon::prelude::*;
use serde::Serialize;
use std::path::Path;

/// The neighbour whose distance sets the scale (the k of k-NN).
pub const KNN_K: usize = 10;
/// The median k-NN distance lands at this fraction of the field radius.
pub const KNN_TARGET: f64 = 1.1;
/// Points whose k-NN distance is measured (evenly spaced through the data).
pub const SCALE_SAMPLE: usize = 1000;

/// Why a data set cannot be brought in.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The matrix has the wrong shape.
    #[error("{0}")]
    Shape(String),
    /// A value is NaN or infinite.
    #[error("row {row}, column {column}: {value} is not a finite number")]
    NotFinite {
        /// 0-based row.
        row: usize,
        /// 0-based column.
        column: usize,
        /// The value.
        value: f64,
    },
    /// The scale cannot be taken from the data (all points at one place), or
    /// the one given is not a positive finite number.
    #[error("{0}")]
    Scale(String),
    /// The file cannot be read or written, or is malformed.
    #[error("{0}")]
    File(String),
}

/// A data set reduced to 8D and scaled.
#[derive(Clone, Debug, Serialize)]
pub struct Embedding {
    /// Points (rows).
    pub rows: usize,
    /// Input dimension `D`.
    pub dims: usize,
    /// The reduced, scaled points, centred at the origin, in field-radius units.
    #[serde(skip)]
    pub points: Vec<Vec8>,
    /// Fraction of the input's variance along each of the 8 components.
    pub explained_variance_ratio: [f64; 8],
    /// Their sum: the fraction of the variance the 8D points keep.
    pub explained_variance: f64,
    /// The median distance to the [`KNN_K`]-th neighbour in 8D before scaling,
    /// in the input's units.
    pub knn_median: f64,
    /// The scale [`KNN_TARGET`]` / knn_median` taken from the data.
    pub auto_scale: f64,
    /// The scale applied (the automatic one unless overridden).
    pub scale: f64,
    /// `k` of the k-NN distances.
    pub knn_k: usize,
    /// Where the median k-NN distance lands, in field radii (`knn_median · scale`).
    pub knn_target: f64,
}

/// Reduces `x` (`rows × dims`, row-major) to 8D by PCA and scales it (the
/// automatic scale, or `scale` when given).
///
/// # Errors
/// [`EmbedError::Shape`] when `x` is not `rows × dims` with `dims ≥ 8` and
/// `rows ≥ 2`; [`EmbedError::NotFinite`] naming the first NaN or infinite
/// value; [`EmbedError::Scale`] when `scale` is not positive and finite, or no
/// scale can be taken from the data (its points coincide).
pub fn reduce(
    x: &[f64],
    rows: usize,
    dims: usize,
    scale: Option<f64>,
) -> Result<Embedding, EmbedError> {
    if dims < 8 {
        return Err(EmbedError::Shape(format!(
            "the data have {dims} dimensions; at least 8 are needed (the engine's space is 8D)"
        )));
    }
    if rows < 2 || x.len() != rows * dims {
        return Err(EmbedError::Shape(format!(
            "{} values for {rows} rows of {dims}: at least 2 full rows are needed",
            x.len()
        )));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(EmbedError::NotFinite {
            row: i / dims,
            column: i % dims,
            value: x[i],
        });
    }
    if let Some(s) = scale
        && !(s.is_finite() && s > 0.0)
    {
        return Err(EmbedError::Scale(format!(
            "scale = {s}: must be a positive finite number"
        )));
    }
    let (axes, ratio) = principal_axes(x, rows, dims);
    let mean = column_means(x, rows, dims);
    let projected: Vec<[f64; 8]> = x
        .par_chunks(dims)
        .map(|row| {
            let mut p = [0f64; 8];
            for (k, axis) in axes.iter().enumerate() {
                p[k] = row
                    .iter()
                    .zip(&mean)
                    .zip(axis)
                    .map(|((v, m), a)| (v - m) * a)
                    .sum();
            }
            p
        })
        .collect();
    let knn_median = median_knn_distance(&projected, KNN_K.min(rows - 1));
    if knn_median.is_nan() || knn_median <= 0.0 {
        return Err(EmbedError::Scale(format!(
            "the median distance to the {}th nearest neighbour is {knn_median}: the points \
             (after reduction to 8D) coincide, so no length scale can be taken from them",
            KNN_K.min(rows - 1)
        )));
    }
    let auto_scale = KNN_TARGET / knn_median;
    let scale = scale.unwrap_or(auto_scale);
    let points = projected
        .iter()
        .map(|p| Vec8::from_array(p.map(|v| (v * scale) as f32)))
        .collect();
    Ok(Embedding {
        rows,
        dims,
        points,
        explained_variance: ratio.iter().sum(),
        explained_variance_ratio: ratio,
        knn_median,
        auto_scale,
        scale,
        knn_k: KNN_K.min(rows - 1),
        knn_target: knn_median * scale,
    })
}

fn column_means(x: &[f64], rows: usize, dims: usize) -> Vec<f64> {
    let mut mean = vec![0f64; dims];
    for row in x.chunks(dims) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= rows as f64);
    mean
}

/// The 8 leading principal axes (unit vectors of length `dims`, sign fixed)
/// and the fraction of the variance along each.
fn principal_axes(x: &[f64], rows: usize, dims: usize) -> ([Vec<f64>; 8], [f64; 8]) {
    let mean = column_means(x, rows, dims);
    // Covariance, accumulated per block of rows in parallel (fixed blocks, so
    // the sum's order does not depend on the thread count).
    let cov = x
        .par_chunks(dims * 256)
        .map(|block| {
            let mut c = nalgebra::DMatrix::<f64>::zeros(dims, dims);
            for row in block.chunks(dims) {
                let centred: Vec<f64> = row.iter().zip(&mean).map(|(v, m)| v - m).collect();
                for i in 0..dims {
                    for j in i..dims {
                        c[(i, j)] += centred[i] * centred[j];
                    }
                }
            }
            c
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold(nalgebra::DMatrix::<f64>::zeros(dims, dims), |a, b| a + b);
    let mut cov = cov / (rows - 1) as f64;
    for i in 0..dims {
        for j in 0..i {
            cov[(i, j)] = cov[(j, i)];
        }
    }
    let eig = nalgebra::SymmetricEigen::new(cov);
    let mut order: Vec<usize> = (0..dims).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
    let total: f64 = eig.eigenvalues.iter().map(|l| l.max(0.0)).sum();
    let mut ratio = [0f64; 8];
    let axes: [Vec<f64>; 8] = std::array::from_fn(|k| {
        let col = eig.eigenvectors.column(order[k]);
        let mut v: Vec<f64> = col.iter().copied().collect();
        let big = v
            .iter()
            .copied()
            .max_by(|a, b| a.abs().total_cmp(&b.abs()))
            .unwrap_or(0.0);
        if big < 0.0 {
            v.iter_mut().for_each(|c| *c = -*c);
        }
        ratio[k] = if total > 0.0 {
            eig.eigenvalues[order[k]].max(0.0) / total
        } else {
            0.0
        };
        v
    });
    (axes, ratio)
}

/// The median, over up to [`SCALE_SAMPLE`] evenly spaced points, of the
/// distance to their `k`-th nearest other point (brute force over all points).
fn median_knn_distance(points: &[[f64; 8]], k: usize) -> f64 {
    let n = points.len();
    let m = n.min(SCALE_SAMPLE);
    let mut d: Vec<f64> = (0..m)
        .into_par_iter()
        .map(|s| {
            let i = s * n / m;
            let q = points[i];
            // The k smallest squared distances to other points, kept sorted.
            let mut best = vec![f64::INFINITY; k];
            for (j, p) in points.iter().enumerate() {
                if j == i {
                    continue;
                }
                let d2: f64 = q.iter().zip(p).map(|(a, b)| (a - b) * (a - b)).sum();
                if d2 < best[k - 1] {
                    let at = best.partition_point(|&b| b <= d2);
                    best.insert(at, d2);
                    best.pop();
                }
            }
            best[k - 1].sqrt()
        })
        .collect();
    d.sort_by(f64::total_cmp);
    d[d.len() / 2]
}

/// The tokens of an embedding (default charge, mass, radius and strength,
/// at rest), with `labels` as fine ground truth and `groups` (or, without
/// them, the labels again) as coarse ground truth.
pub fn tokens(e: &Embedding, labels: Option<&[u32]>, groups: Option<&[u32]>) -> Vec<Generated> {
    e.points
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let label = labels.map(|l| l[i]);
            Generated {
                spec: TokenSpec::at(p),
                label,
                group: groups.map(|g| g[i]).or(label),
            }
        })
        .collect()
}

/// A data matrix read from a file, with its labels if it has any.
pub struct DataSet {
    /// Row-major values.
    pub values: Vec<f64>,
    /// Rows.
    pub rows: usize,
    /// Columns (features).
    pub dims: usize,
    /// The `label` column's values, numbered in order of first appearance.
    pub labels: Option<Vec<u32>>,
    /// The label texts, by number.
    pub label_names: Vec<String>,
}

/// Reads `path`: `.npy` (a 2-D array of floats or integers) or `.csv` (a
/// header; every column a feature but one named `label`, whose values may be
/// any text).
///
/// # Errors
/// [`EmbedError::File`] naming the file (and the line and column of a bad
/// cell) when it cannot be read, has another extension or is malformed.
pub fn read_data(path: &Path) -> Result<DataSet, EmbedError> {
    let err = |m: String| EmbedError::File(format!("{}: {m}", path.display()));
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => {
            let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| err(e.to_string()))?;
            let shape = npy.shape().to_vec();
            if shape.len() != 2 {
                return Err(err(format!(
                    "an array of shape {shape:?}: a 2-D array (rows, dims) is needed"
                )));
            }
            let (rows, dims) = (shape[0] as usize, shape[1] as usize);
            let values: Vec<f64> = match npy.dtype() {
                npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Float => {
                    match t.size_field() {
                        4 => npy
                            .into_vec::<f32>()
                            .map_err(|e| err(e.to_string()))?
                            .into_iter()
                            .map(f64::from)
                            .collect(),
                        _ => npy.into_vec::<f64>().map_err(|e| err(e.to_string()))?,
                    }
                }
                npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Int => npy
                    .into_vec::<i64>()
                    .map_err(|e| err(e.to_string()))?
                    .into_iter()
                    .map(|v| v as f64)
                    .collect(),
                other => {
                    return Err(err(format!(
                        "dtype {}: floats or integers are needed",
                        other.descr()
                    )));
                }
            };
            Ok(DataSet {
                values,
                rows,
                dims,
                labels: None,
                label_names: Vec::new(),
            })
        }
        Some("csv") => read_csv(path),
        _ => Err(err(
            "unknown file type: .csv or .npy (a 2-D array) is needed".into(),
        )),
    }
}

fn read_csv(path: &Path) -> Result<DataSet, EmbedError> {
    let err = |m: String| EmbedError::File(format!("{}: {m}", path.display()));
    let mut r = csv::Reader::from_path(path).map_err(|e| err(e.to_string()))?;
    let header = r.headers().map_err(|e| err(e.to_string()))?.clone();
    let label_col = header.iter().position(|h| h.trim() == "label");
    let dims = header.len() - usize::from(label_col.is_some());
    let mut values = Vec::new();
    let mut labels = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for (k, rec) in r.records().enumerate() {
        let line = k + 2;
        let rec = rec.map_err(|e| err(format!("line {line}: {e}")))?;
        for (c, cell) in rec.iter().enumerate() {
            if Some(c) == label_col {
                let next = names.len() as u32;
                let id = *index.entry(cell.to_string()).or_insert_with(|| {
                    names.push(cell.to_string());
                    next
                });
                labels.push(id);
            } else {
                let v: f64 = cell.trim().parse().map_err(|_| {
                    err(format!(
                        "line {line}, column {} ({}): {cell:?} is not a number",
                        c + 1,
                        &header[c]
                    ))
                })?;
                values.push(v);
            }
        }
    }
    let rows = values.len() / dims.max(1);
    Ok(DataSet {
        values,
        rows,
        dims,
        labels: label_col.map(|_| labels),
        label_names: names,
    })
}

/// Writes the embedding as a `--input` CSV (`x0..x7`, and `label` when given).
///
/// # Errors
/// [`EmbedError::File`] when the file cannot be written.
pub fn write_tokens_csv(
    path: &Path,
    e: &Embedding,
    labels: Option<(&[u32], &[String])>,
) -> Result<(), EmbedError> {
    let err = |m: String| EmbedError::File(format!("{}: {m}", path.display()));
    let mut w = csv::Writer::from_path(path).map_err(|x| err(x.to_string()))?;
    let mut header: Vec<String> = (0..8).map(|k| format!("x{k}")).collect();
    if labels.is_some() {
        header.push("label".into());
    }
    w.write_record(&header).map_err(|x| err(x.to_string()))?;
    for (i, p) in e.points.iter().enumerate() {
        let mut rec: Vec<String> = p.to_array().iter().map(|v| v.to_string()).collect();
        if let Some((l, names)) = labels {
            rec.push(names[l[i] as usize].clone());
        }
        w.write_record(&rec).map_err(|x| err(x.to_string()))?;
    }
    w.flush().map_err(|x| err(x.to_string()))
}
