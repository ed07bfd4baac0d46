//! Plain-text tables for the one-shot commands (`auth resolve`, `status`, `audit`): columns padded
//! to their widest cell (header included), two spaces apart, trailing spaces trimmed; control
//! characters in a cell shown escaped ([`printable_line`]).

use crate::model::printable::printable_line;

/// The header line, then one line per row. Every row has as many cells as the header; a missing
/// cell prints empty and an extra cell is dropped.
pub fn columns<R: AsRef<[String]>>(header: &[&str], rows: &[R]) -> String {
    // A cell is one line: every control character in it (a newline too) shown escaped.
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.as_ref().iter().map(|c| printable_line(c)).collect())
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(header.as_slice()).chain(rows.iter().map(Vec::as_slice)) {
        let cells: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(i, w)| format!("{:<w$}", row.get(i).map_or("", String::as_str)))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_to_the_widest_cell_and_trimmed() {
        let rows = vec![
            vec!["1".to_string(), "a-long-cell".into(), String::new()],
            vec!["10".to_string(), "b".into(), "x".into()],
            vec!["short".to_string()],
        ];
        assert_eq!(
            columns(&["#", "NAME", "LAST"], &rows),
            "#      NAME         LAST\n1      a-long-cell\n10     b            x\nshort\n"
        );
        assert_eq!(columns::<Vec<String>>(&["A", "B"], &[]), "A  B\n");
        // Widths count characters, not bytes.
        let rows = [["✓".to_string(), "z".into()]];
        assert_eq!(columns(&["ok", "v"], &rows), "ok  v\n✓   z\n");
        // A cell cannot reach the terminal's controls, nor break the table with a newline.
        let rows = [["\u{1b}]0;pwned\u{7}".to_string(), "a\nb".into()]];
        assert_eq!(
            columns(&["A", "B"], &rows),
            "A                    B\n\\u{1b}]0;pwned\\u{7}  a\\u{a}b\n"
        );
    }
}
