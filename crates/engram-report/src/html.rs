//! A self-contained HTML page assembled from sections: headings, paragraphs, tables, SVG.

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[derive(Default)]
pub struct Page {
    title: String,
    body: String,
}

impl Page {
    pub fn new(title: &str) -> Page {
        let mut p = Page {
            title: title.to_string(),
            body: String::new(),
        };
        p.body.push_str(&format!("<h1>{}</h1>\n", esc(title)));
        p
    }

    pub fn heading(&mut self, text: &str) -> &mut Self {
        self.body.push_str(&format!("<h2>{}</h2>\n", esc(text)));
        self
    }

    pub fn para(&mut self, text: &str) -> &mut Self {
        self.body.push_str(&format!("<p>{}</p>\n", esc(text)));
        self
    }

    /// A table; the first column is left-aligned, the others right-aligned (numbers).
    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) -> &mut Self {
        self.body.push_str("<table>\n<tr>");
        for h in header {
            self.body.push_str(&format!("<th>{}</th>", esc(h)));
        }
        self.body.push_str("</tr>\n");
        for r in rows {
            self.body.push_str("<tr>");
            for c in r {
                self.body.push_str(&format!("<td>{}</td>", esc(c)));
            }
            self.body.push_str("</tr>\n");
        }
        self.body.push_str("</table>\n");
        self
    }

    /// A third-level heading.
    pub fn subheading(&mut self, text: &str) -> &mut Self {
        self.body.push_str(&format!("<h3>{}</h3>\n", esc(text)));
        self
    }

    /// A paragraph in smaller, grey type (notes, parameters).
    pub fn note(&mut self, text: &str) -> &mut Self {
        self.body
            .push_str(&format!("<p class=\"note\">{}</p>\n", esc(text)));
        self
    }

    /// A table whose first `text_cols` columns are left-aligned text, the rest right-aligned
    /// numbers.
    pub fn table_text_cols(
        &mut self,
        header: &[&str],
        rows: &[Vec<String>],
        text_cols: usize,
    ) -> &mut Self {
        self.body.push_str("<table>\n<tr>");
        for h in header {
            self.body.push_str(&format!("<th>{}</th>", esc(h)));
        }
        self.body.push_str("</tr>\n");
        for r in rows {
            self.body.push_str("<tr>");
            for (j, c) in r.iter().enumerate() {
                let class = if j < text_cols { " class=\"t\"" } else { "" };
                self.body.push_str(&format!("<td{class}>{}</td>", esc(c)));
            }
            self.body.push_str("</tr>\n");
        }
        self.body.push_str("</table>\n");
        self
    }

    /// SVG elements side by side, wrapping to the next line when the page is too narrow.
    pub fn svg_row(&mut self, svgs: &[String]) -> &mut Self {
        self.body.push_str("<div class=\"row\">");
        for s in svgs {
            self.body.push_str("<figure>");
            self.body.push_str(s);
            self.body.push_str("</figure>");
        }
        self.body.push_str("</div>\n");
        self
    }

    /// Inserts an SVG element made by [`crate::svg`].
    pub fn svg(&mut self, svg: &str) -> &mut Self {
        self.body.push_str("<figure>");
        self.body.push_str(svg);
        self.body.push_str("</figure>\n");
        self
    }

    pub fn render(&self) -> String {
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n<style>{STYLE}</style></head>\n<body>\n{}</body></html>\n",
            esc(&self.title),
            self.body
        )
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px}\
td:not(:first-child){text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f3f3}\
td.t{text-align:left}td:not(:first-child):not(.t){white-space:nowrap}figure{margin:1em 0}.row{display:flex;flex-wrap:wrap;gap:12px 24px;align-items:flex-start}\
.row figure{margin:0.5em 0}p.note{color:#555;font-size:90%}h3{margin-top:1.6em}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_text() {
        let mut p = Page::new("a <b>");
        p.table(&["x"], &[vec!["1 & 2".into()]]);
        let html = p.render();
        assert!(html.contains("a &lt;b&gt;") && html.contains("1 &amp; 2"));
        assert!(html.starts_with("<!DOCTYPE html>"));
    }

    #[test]
    fn text_columns_and_rows() {
        let mut p = Page::new("t");
        p.table_text_cols(
            &["a", "b", "c"],
            &[vec!["x".into(), "y".into(), "1".into()]],
            2,
        )
        .svg_row(&["<svg></svg>".into(), "<svg></svg>".into()])
        .subheading("h <3")
        .note("n");
        let html = p.render();
        assert_eq!(html.matches("<td class=\"t\">").count(), 2);
        assert!(html.contains("<div class=\"row\"><figure><svg></svg></figure><figure>"));
        assert!(html.contains("<h3>h &lt;3</h3>") && html.contains("<p class=\"note\">n</p>"));
    }
}
