//! A self-contained HTML page assembled from sections: headings, paragraphs, tables, SVG.

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One cell of [`Page::marked_table`]: its text, an optional part after it in lighter type
/// (a spread: `± 1.20`), and whether it is the best of its column.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cell {
    pub text: String,
    pub detail: Option<String>,
    pub best: bool,
}

impl Cell {
    pub fn text(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            ..Default::default()
        }
    }

    fn render(&self, text_col: bool) -> String {
        if text_col {
            return format!("<td class=\"t\">{}</td>", esc(&self.text));
        }
        // The spread goes on a line of its own under the value (a column stays narrow enough
        // for a laptop screen); every number cell keeps room for the mark, so values line up.
        let detail = self
            .detail
            .as_ref()
            .map(|d| format!("<span class=\"sd\">{}</span>", esc(d)))
            .unwrap_or_default();
        let value = format!("<span class=\"m\">{}</span>", esc(&self.text));
        if self.best {
            format!(
                "<td class=\"best\" title=\"best in this column\"><strong>{value}</strong><span class=\"mk\">★</span>{detail}</td>"
            )
        } else {
            format!("<td>{value}<span class=\"mk\"></span>{detail}</td>")
        }
    }
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
        self.body.push_str("<div class=\"scroll\"><table>\n<tr>");
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
        self.body.push_str("</table></div>\n");
        self
    }

    /// The paragraph a reader sees first (a summary), in slightly larger type.
    pub fn lead(&mut self, text: &str) -> &mut Self {
        self.body
            .push_str(&format!("<p class=\"summary\">{}</p>\n", esc(text)));
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
        self.body.push_str("<div class=\"scroll\"><table>\n<tr>");
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
        self.body.push_str("</table></div>\n");
        self
    }

    /// A heading of `level` (2 to 4) with an `id` to link to (`id` is used as given: callers
    /// pass plain ASCII names).
    pub fn heading_id(&mut self, level: u8, text: &str, id: &str) -> &mut Self {
        let l = level.clamp(2, 4);
        self.body
            .push_str(&format!("<h{l} id=\"{}\">{}</h{l}>\n", esc(id), esc(text)));
        self
    }

    /// A fourth-level heading.
    pub fn minor_heading(&mut self, text: &str) -> &mut Self {
        self.body.push_str(&format!("<h4>{}</h4>\n", esc(text)));
        self
    }

    /// Links to the page's sections: (text, id) pairs.
    pub fn contents(&mut self, entries: &[(String, String)]) -> &mut Self {
        self.body.push_str("<nav><ol>");
        for (text, id) in entries {
            self.body.push_str(&format!(
                "<li><a href=\"#{}\">{}</a></li>",
                esc(id),
                esc(text)
            ));
        }
        self.body.push_str("</ol></nav>\n");
        self
    }

    /// A table with a caption whose numeric cells may be marked best (bold and a ★, so that
    /// the mark does not rest on colour). `body` rows come first; `foot` rows (references
    /// that take no part in the marking) follow under a rule. The first `text_cols` columns
    /// are left-aligned text that may wrap; the others are right-aligned numbers. The table
    /// scrolls inside its own box when the page is narrower than it.
    pub fn marked_table(
        &mut self,
        caption: &str,
        header: &[&str],
        body: &[Vec<Cell>],
        foot: &[Vec<Cell>],
        text_cols: usize,
    ) -> &mut Self {
        let b = &mut self.body;
        // The caption sits outside the scrolling box, so that it wraps to the page's width
        // and stays readable when the table scrolls.
        b.push_str(&format!(
            "<figure class=\"table\"><figcaption>{}</figcaption><div class=\"scroll\"><table class=\"marked\">\n<thead><tr>",
            esc(caption)
        ));
        for (j, h) in header.iter().enumerate() {
            let class = if j < text_cols { " class=\"t\"" } else { "" };
            b.push_str(&format!("<th scope=\"col\"{class}>{}</th>", esc(h)));
        }
        b.push_str("</tr></thead>\n");
        for (rows, class) in [(body, ""), (foot, " class=\"ref\"")] {
            if rows.is_empty() {
                continue;
            }
            b.push_str(&format!("<tbody{class}>\n"));
            for r in rows {
                b.push_str("<tr>");
                for (j, c) in r.iter().enumerate() {
                    b.push_str(&c.render(j < text_cols));
                }
                b.push_str("</tr>\n");
            }
            b.push_str("</tbody>\n");
        }
        b.push_str("</table></div></figure>\n");
        self
    }

    /// `key = value` lines under a title (settings); nothing for an empty list.
    pub fn key_values(&mut self, title: &str, pairs: &[(String, String)]) -> &mut Self {
        if pairs.is_empty() {
            return self;
        }
        self.body.push_str(&format!(
            "<p class=\"kvt\">{}</p><ul class=\"kv\">",
            esc(title)
        ));
        for (k, v) in pairs {
            self.body
                .push_str(&format!("<li><code>{} = {}</code></li>", esc(k), esc(v)));
        }
        self.body.push_str("</ul>\n");
        self
    }

    /// Opens a collapsible block (closed until clicked) with a one-line summary; close it
    /// with [`Page::end_details`].
    pub fn details(&mut self, summary: &str) -> &mut Self {
        self.body
            .push_str(&format!("<details><summary>{}</summary>\n", esc(summary)));
        self
    }

    pub fn end_details(&mut self) -> &mut Self {
        self.body.push_str("</details>\n");
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

/// Readable at laptop and desktop widths: the page is at most 1200 px wide, tables scroll in
/// their own box instead of widening it, figures shrink to fit, text is never below 12 px.
const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}\
h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:0.2em}h3{margin-top:1.6em}h4{margin:1.2em 0 0.4em}\
.scroll{overflow-x:auto;max-width:100%;margin:1em 0}\
table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:4px 10px}\
td:not(:first-child){text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f3f3}\
td.t,th.t{text-align:left}td:not(:first-child):not(.t){white-space:nowrap}\
figure.table{margin:1.2em 0}figure.table .scroll{margin:0.4em 0 0}\
figcaption{font-size:14px;color:#333}\
table.marked td.t{overflow-wrap:anywhere;min-width:6em;max-width:18em}table.marked td.t:first-child{min-width:0}\
table.marked th{text-align:right;vertical-align:bottom}table.marked th.t{text-align:left}\
table.marked td{vertical-align:top}\
table.marked .mk{display:inline-block;width:1.2em;text-align:right}\
table.marked .sd{display:block;font-size:12px;color:#555;margin-right:1.2em;white-space:nowrap}\
table.marked td.best{background:#eef4ff}table.marked td.best .sd{color:#333;font-weight:600}\
table.marked tbody.ref{border-top:3px double #999;color:#444}\
figure{margin:1em 0;max-width:100%;min-width:0}figure svg{max-width:100%;height:auto}\
.row{display:flex;flex-wrap:wrap;gap:12px 24px;align-items:flex-start}\
.row figure{margin:0.5em 0}p.note{color:#555;font-size:90%}p.summary{font-size:17px}\
nav ol{margin:0.5em 0;padding-left:1.5em}\
details{margin:0.8em 0}summary{cursor:pointer;color:#333}\
p.kvt{margin:0.8em 0 0.2em;font-weight:600;font-size:14px}\
ul.kv{list-style:none;margin:0;padding:0 0 0 1em;font-size:13px;columns:2 26em}\
ul.kv li{overflow-wrap:anywhere;break-inside:avoid}ul.kv code{font-size:13px}";

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
