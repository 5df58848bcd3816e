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
//! Cost: `O(n·D²)` for the covariance (16 `D × D` partial sums, gemm over
//! blocks of 512 rows), `O(D³)` for the eigensolver (`D` ≤ [`MAX_DIMS`]), and
//! `O(min(n, 1000) · n)` 8D distances for the scale (brute force, in
//! parallel). The whole matrix is held in memory as `f64`, twice (the input
//! and a copy in units of its largest magnitude).

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
/// The most input dimensions taken (the eigensolver is `O(D³)`).
pub const MAX_DIMS: usize = 4096;
/// Parts of the rows whose covariances are summed in order.
const COV_PARTS: usize = 16;
/// Rows per `Bᵀ·B` update.
const COV_BLOCK: usize = 512;

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
    /// The median distance to the [`KNN_K`]-th neighbour (exact duplicates
    /// left out) in 8D before scaling, in the input's units; 0 when none could
    /// be measured (then a scale was given).
    pub knn_median: f64,
    /// The scale [`KNN_TARGET`]` / knn_median` taken from the data (NaN when
    /// it could not be: then a scale was given).
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
/// [`EmbedError::Shape`] when `x` is not `rows × dims` with
/// `8 ≤ dims ≤ MAX_DIMS` and `rows ≥ 2`; [`EmbedError::NotFinite`] naming the first NaN or infinite
/// value; [`EmbedError::Scale`] when `scale` is not positive and finite, or,
/// without `scale`, when none can be taken from the data (its points coincide).
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
    if dims > MAX_DIMS {
        return Err(EmbedError::Shape(format!(
            "the data have {dims} dimensions; at most {MAX_DIMS} are taken (the PCA diagonalises a \
             dims × dims covariance)"
        )));
    }
    // Work in units of the largest magnitude, so that neither huge nor tiny
    // inputs overflow or underflow; the result does not depend on the unit.
    let unit = x.iter().fold(0f64, |m, v| m.max(v.abs()));
    if unit == 0.0 {
        return Err(EmbedError::Scale(
            "every value is 0: the points coincide, so no length scale can be taken from them"
                .into(),
        ));
    }
    let x: Vec<f64> = x.iter().map(|v| v / unit).collect();
    let (axes, ratio) = principal_axes(&x, rows, dims);
    let mean = column_means(&x, rows, dims);
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
    drop(x);
    let k = KNN_K.min(rows - 1);
    // In input units. Exact duplicates (distance 0) are left out of the median.
    let knn_median = median_knn_distance(&projected, k).map(|d| d * unit);
    let auto_scale = knn_median.map(|d| KNN_TARGET / d);
    let scale = match (scale, auto_scale) {
        (Some(s), _) => s,
        (None, Some(a)) => a,
        (None, None) => {
            return Err(EmbedError::Scale(format!(
                "every sampled point has {k} exact duplicates or more (after reduction to 8D), \
                 so no length scale can be taken from the distances to their {k}th nearest \
                 neighbours; give the scale"
            )));
        }
    };
    let points = projected
        .iter()
        .map(|p| Vec8::from_array(p.map(|v| (v * unit * scale) as f32)))
        .collect();
    Ok(Embedding {
        rows,
        dims,
        points,
        explained_variance: ratio.iter().sum(),
        explained_variance_ratio: ratio,
        knn_median: knn_median.unwrap_or(0.0),
        auto_scale: auto_scale.unwrap_or(f64::NAN),
        scale,
        knn_k: k,
        knn_target: knn_median.unwrap_or(0.0) * scale,
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
    // Covariance as a sum over a fixed number of contiguous parts of the rows
    // (so the order of the sum does not depend on the thread count), each
    // accumulated as `Bᵀ·B` over blocks of centred rows (nalgebra's gemm).
    let part = rows.div_ceil(COV_PARTS).max(1);
    let cov = x
        .par_chunks(part * dims)
        .map(|rows_of_part| {
            let mut c = nalgebra::DMatrix::<f64>::zeros(dims, dims);
            for block in rows_of_part.chunks(COV_BLOCK * dims) {
                let r = block.len() / dims;
                let mut b = nalgebra::DMatrix::<f64>::from_row_slice(r, dims, block);
                for (j, mut col) in b.column_iter_mut().enumerate() {
                    col.add_scalar_mut(-mean[j]);
                }
                c.gemm_tr(1.0, &b, &b, 1.0);
            }
            c
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold(nalgebra::DMatrix::<f64>::zeros(dims, dims), |a, b| a + b);
    let cov = cov / (rows - 1) as f64;
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
/// distance to their `k`-th nearest other point at a positive distance (brute
/// force over all points; exact duplicates do not count as neighbours), or
/// `None` when no sampled point has `k` such neighbours.
fn median_knn_distance(points: &[[f64; 8]], k: usize) -> Option<f64> {
    let n = points.len();
    let m = n.min(SCALE_SAMPLE);
    let mut d: Vec<f64> = (0..m)
        .into_par_iter()
        .filter_map(|s| {
            let i = s * n / m;
            let q = points[i];
            // The k smallest positive squared distances, kept sorted.
            let mut best = vec![f64::INFINITY; k];
            for p in points {
                let d2: f64 = q.iter().zip(p).map(|(a, b)| (a - b) * (a - b)).sum();
                if d2 > 0.0 && d2 < best[k - 1] {
                    let at = best.partition_point(|&b| b <= d2);
                    best.insert(at, d2);
                    best.pop();
                }
            }
            best[k - 1].is_finite().then(|| best[k - 1].sqrt())
        })
        .collect();
    if d.is_empty() {
        return None;
    }
    d.sort_by(f64::total_cmp);
    Some(d[d.len() / 2])
}

/// The tokens of an embedding (default charge, mass, radius and strength,
/// at rest), with `labels` as fine ground truth and `groups` as coarse ground
/// truth; either one alone serves for both.
pub fn tokens(e: &Embedding, labels: Option<&[u32]>, groups: Option<&[u32]>) -> Vec<Generated> {
    e.points
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let label = labels.map(|l| l[i]);
            let group = groups.map(|g| g[i]);
            Generated {
                spec: TokenSpec::at(p),
                label: label.or(group),
                group: group.or(label),
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
        Some("npy") => read_npy(path),
        Some("csv") => read_csv(path),
        _ => Err(err(
            "unknown file type: .csv or .npy (a 2-D array) is needed".into(),
        )),
    }
}

/// Reads a 2-D `.npy` of floats (32 or 64 bits), integers or booleans, in C
/// or Fortran order.
fn read_npy(path: &Path) -> Result<DataSet, EmbedError> {
    use npyz::TypeChar;
    let err = |m: String| EmbedError::File(format!("{}: {m}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| err(e.to_string()))?;
    let shape = npy.shape().to_vec();
    if shape.len() != 2 {
        return Err(err(format!(
            "an array of shape {shape:?}: a 2-D array (rows, dims) is needed"
        )));
    }
    let (rows, dims) = (shape[0] as usize, shape[1] as usize);
    let fortran = npy.order() == npyz::Order::Fortran;
    let dtype = npy.dtype();
    let read = |e: std::io::Error| err(e.to_string());
    let values: Vec<f64> = match &dtype {
        npyz::DType::Plain(t) => match (t.type_char(), t.size_field()) {
            (TypeChar::Float, 4) => npy
                .into_vec::<f32>()
                .map_err(read)?
                .into_iter()
                .map(f64::from)
                .collect(),
            (TypeChar::Float, 8) => npy.into_vec::<f64>().map_err(read)?,
            (TypeChar::Int, 1) => npy
                .into_vec::<i8>()
                .map_err(read)?
                .into_iter()
                .map(f64::from)
                .collect(),
            (TypeChar::Int, 2) => npy
                .into_vec::<i16>()
                .map_err(read)?
                .into_iter()
                .map(f64::from)
                .collect(),
            (TypeChar::Int, 4) => npy
                .into_vec::<i32>()
                .map_err(read)?
                .into_iter()
                .map(f64::from)
                .collect(),
            (TypeChar::Int, 8) => npy
                .into_vec::<i64>()
                .map_err(read)?
                .into_iter()
                .map(|v| v as f64)
                .collect(),
            (TypeChar::Uint, 1) => npy
                .into_vec::<u8>()
                .map_err(read)?
                .into_iter()
                .map(f64::from)
                .collect(),
            (TypeChar::Uint, 2) => npy
                .into_vec::<u16>()
                .map_err(read)?
                .into_iter()
                .map(f64::from)
                .collect(),
            (TypeChar::Uint, 4) => npy
                .into_vec::<u32>()
                .map_err(read)?
                .into_iter()
                .map(f64::from)
                .collect(),
            (TypeChar::Uint, 8) => npy
                .into_vec::<u64>()
                .map_err(read)?
                .into_iter()
                .map(|v| v as f64)
                .collect(),
            (TypeChar::Bool, _) => npy
                .into_vec::<bool>()
                .map_err(read)?
                .into_iter()
                .map(|b| f64::from(u8::from(b)))
                .collect(),
            _ => {
                return Err(err(format!(
                    "dtype {}: not supported (float32, float64, integers of 8 to 64 bits or bool are)",
                    dtype.descr()
                )));
            }
        },
        _ => {
            return Err(err(format!(
                "dtype {}: a structured array; a plain 2-D array of numbers is needed",
                dtype.descr()
            )));
        }
    };
    // Fortran order stores column after column: bring it to rows.
    let values = if fortran {
        let mut by_row = vec![0f64; values.len()];
        for (k, v) in values.into_iter().enumerate() {
            let (col, row) = (k / rows.max(1), k % rows.max(1));
            by_row[row * dims + col] = v;
        }
        by_row
    } else {
        values
    };
    Ok(DataSet {
        values,
        rows,
        dims,
        labels: None,
        label_names: Vec::new(),
    })
}

fn read_csv(path: &Path) -> Result<DataSet, EmbedError> {
    let err = |m: String| EmbedError::File(format!("{}: {m}", path.display()));
    let mut r = csv::Reader::from_path(path).map_err(|e| err(e.to_string()))?;
    let header = r.headers().map_err(|e| err(e.to_string()))?.clone();
    if header.iter().all(|h| h.trim().parse::<f64>().is_ok()) {
        return Err(err(
            "line 1 holds only numbers: a header naming the columns is needed".into(),
        ));
    }
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
