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

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px}\
td:not(:first-child){text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f3f3}\
figure{margin:1em 0}";

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
}
