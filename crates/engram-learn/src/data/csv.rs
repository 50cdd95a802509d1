//! CSV tables (the user's `kind = "csv"` data sets): a header row, then one example per row
//! with its feature columns, a label column and optionally a domain column.
//!
//! Cells are trimmed; fields may be quoted (RFC 4180, the `csv` crate). The file may be
//! gzip-compressed. Features are numbers (finite); the label and domain cells are kept as
//! text here and mapped to ids by [`super::user`] (integers as they are, other text to ids in
//! sorted order). By default the features are every column other than the label and domain
//! whose first row holds a number (a text column such as a file name is left out); list
//! `features` to choose. Errors name the file, the line and the column.

use std::path::Path;

use super::{DataError, DataFile, read_maybe_gz};

/// One CSV file read.
#[derive(Clone, Debug, PartialEq)]
pub struct CsvPart {
    /// n × features.len() values, row-major.
    pub x: Vec<f32>,
    /// The feature columns used, in order.
    pub features: Vec<String>,
    /// The label cell of each row.
    pub labels: Vec<String>,
    /// The domain cell of each row, when a domain column is named.
    pub domains: Option<Vec<String>>,
    pub file: DataFile,
}

impl CsvPart {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Reads `path` (at most `limit` bytes): the label column `label`, the domain column
/// `domain` if named, and the feature columns `features` (default: see the module).
pub fn read(
    path: &Path,
    label: &str,
    domain: Option<&str>,
    features: Option<&[String]>,
    limit: u64,
) -> Result<CsvPart, DataError> {
    let (bytes, file) = read_maybe_gz(path, limit)?;
    let bad = |msg: String| DataError::corrupt(path, msg);
    let mut rd = ::csv::ReaderBuilder::new()
        .trim(::csv::Trim::All)
        .from_reader(&bytes[..]);
    let header: Vec<String> = rd
        .headers()
        .map_err(|e| bad(format!("cannot read its header row ({e})")))?
        .iter()
        .map(String::from)
        .collect();
    if header.is_empty() || header.iter().all(String::is_empty) {
        return Err(bad(
            "has no header row (the first row names the columns)".into()
        ));
    }
    for (i, h) in header.iter().enumerate() {
        if header[..i].contains(h) {
            return Err(bad(format!("names column '{h}' twice")));
        }
    }
    let column = |name: &str, key: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            bad(format!(
                "has no column '{name}' (dataset.{key}); its columns: {}",
                header.join(", ")
            ))
        })
    };
    let label_at = column(label, "label")?;
    let domain_at = domain.map(|d| column(d, "domain")).transpose()?;
    let mut records = Vec::new();
    for r in rd.records() {
        records.push(r.map_err(|e| bad(format!("{e}")))?);
    }
    let Some(first) = records.first() else {
        return Err(bad("has a header but no data rows".into()));
    };
    let chosen: Vec<usize> = match features {
        Some(list) => list
            .iter()
            .map(|f| column(f, "features"))
            .collect::<Result<_, _>>()?,
        None => (0..header.len())
            .filter(|&i| i != label_at && Some(i) != domain_at)
            .filter(|&i| first.get(i).is_some_and(|c| c.parse::<f64>().is_ok()))
            .collect(),
    };
    if chosen.is_empty() {
        return Err(bad(format!(
            "has no numeric feature column besides the label '{label}' (columns: {})",
            header.join(", ")
        )));
    }
    if let Some(&i) = chosen
        .iter()
        .find(|&&i| i == label_at || Some(i) == domain_at)
    {
        return Err(bad(format!(
            "column '{}' is named both as a feature and as the label or domain",
            header[i]
        )));
    }
    let mut x = Vec::with_capacity(records.len() * chosen.len());
    let mut labels = Vec::with_capacity(records.len());
    let mut domains = domain_at.map(|_| Vec::with_capacity(records.len()));
    for r in &records {
        let line = r.position().map_or(0, |p| p.line());
        let cell = |i: usize| r.get(i).unwrap_or("");
        for &i in &chosen {
            let v = cell(i);
            let num = v.parse::<f64>().map_err(|_| {
                bad(format!(
                    "line {line}, column '{}': '{v}' is not a number (choose the feature \
                     columns with dataset.features)",
                    header[i]
                ))
            })?;
            let f = num as f32;
            if !f.is_finite() {
                return Err(bad(format!(
                    "line {line}, column '{}': '{v}' is not a finite number{}",
                    header[i],
                    if num.is_finite() { " as f32" } else { "" }
                )));
            }
            x.push(f);
        }
        let l = cell(label_at);
        if l.is_empty() {
            return Err(bad(format!("line {line}: the label ('{label}') is empty")));
        }
        labels.push(l.to_string());
        if let (Some(d), Some(at)) = (domains.as_mut(), domain_at) {
            let v = cell(at);
            if v.is_empty() {
                return Err(bad(format!(
                    "line {line}: the domain ('{}') is empty",
                    header[at]
                )));
            }
            d.push(v.to_string());
        }
    }
    Ok(CsvPart {
        x,
        features: chosen.iter().map(|&i| header[i].clone()).collect(),
        labels,
        domains,
        file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_text(text: &str, features: Option<&[String]>) -> Result<CsvPart, DataError> {
        let dir = tempfile::tempdir().map_err(|source| DataError::Io {
            path: "tmp".into(),
            source,
        })?;
        let p = dir.path().join("t.csv");
        std::fs::write(&p, text).map_err(|source| DataError::Io {
            path: p.clone(),
            source,
        })?;
        read(&p, "label", Some("site"), features, 1 << 20)
    }

    fn err(r: Result<CsvPart, DataError>) -> String {
        r.map_or_else(|e| e.to_string(), |_| "<no error>".into())
    }

    #[test]
    fn columns_by_name_and_text_columns_left_out() -> Result<(), DataError> {
        let t = read_text(
            "file, a, label, b, site\nx.png, 1.5, cat, -2, north\n\"y,z\", 3, dog, 4e1, south\n",
            None,
        )?;
        assert_eq!(t.features, vec!["a", "b"]);
        assert_eq!(t.x, vec![1.5, -2.0, 3.0, 40.0]);
        assert_eq!(t.labels, vec!["cat", "dog"]);
        assert_eq!(t.domains, Some(vec!["north".into(), "south".into()]));
        let t = read_text("a,b,label,site\n1,2,0,s\n", Some(&["b".into()]))?;
        assert_eq!(t.x, vec![2.0]);
        Ok(())
    }

    #[test]
    fn bad_cells_name_the_line_and_column() {
        let e = err(read_text("a,label,site\n1,0,s\nx,1,s\n", None));
        assert!(
            e.contains("t.csv") && e.contains("line 3") && e.contains("'a'"),
            "{e}"
        );
        let e = err(read_text("a,label,site\n1,0,s\nnan,1,s\n", None));
        assert!(e.contains("line 3") && e.contains("finite"), "{e}");
        let e = err(read_text("a,label,site\n1e300,0,s\n", None));
        assert!(e.contains("as f32"), "{e}");
        let e = err(read_text("a,lab,site\n1,0,s\n", None));
        assert!(
            e.contains("no column 'label'") && e.contains("a, lab, site"),
            "{e}"
        );
        let e = err(read_text("a,label,site\n", None));
        assert!(e.contains("no data rows"), "{e}");
        let e = err(read_text("a,label,site\n1,0,s\n2,1\n", None));
        assert!(e.contains("t.csv"), "{e}");
        let e = err(read_text("a,label,site\n1,,s\n", None));
        assert!(e.contains("label") && e.contains("empty"), "{e}");
        let e = err(read_text("a,a,label,site\n1,2,0,s\n", None));
        assert!(e.contains("twice"), "{e}");
        let e = err(read_text("n,label,site\nx,0,s\n", None));
        assert!(e.contains("no numeric feature"), "{e}");
        let e = err(read_text("a,label,site\n1,0,s\n", Some(&["label".into()])));
        assert!(e.contains("both"), "{e}");
        let e = err(read_text("a,label,site\n1,0,s\n", Some(&["q".into()])));
        assert!(e.contains("no column 'q'") && e.contains("features"), "{e}");
    }
}
