//! CSV (RFC 4180): comma-separated, CRLF-free (`\n` line ends), fields quoted when
//! they hold a comma, a quote or a line break. Amounts are integer minor units with
//! their currency in its own column, as in the JSON.

use std::io::Write;

use crate::error::ProjectionError;

/// Writes CSV lines to `out`. Public so that every CSV the platform writes (exports
/// and HTTP answers alike) follows the same rules.
pub struct CsvWriter<'a> {
    out: &'a mut dyn Write,
}

impl<'a> CsvWriter<'a> {
    pub fn new(out: &'a mut dyn Write) -> Self {
        CsvWriter { out }
    }

    pub fn row<S: AsRef<str>>(&mut self, cells: impl IntoIterator<Item = S>) -> Result<(), ProjectionError> {
        let mut line = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            push_field(&mut line, cell.as_ref());
        }
        line.push('\n');
        self.out.write_all(line.as_bytes())?;
        Ok(())
    }
}

fn push_field(line: &mut String, field: &str) {
    // A leading =, +, - or @ would make spreadsheets evaluate a formula; quote-and-tick it.
    let formula = field.starts_with(['=', '+', '@']) || (field.starts_with('-') && field.parse::<i64>().is_err());
    if field.contains([',', '"', '\n', '\r']) || formula {
        line.push('"');
        if formula {
            line.push('\'');
        }
        line.push_str(&field.replace('"', "\"\""));
        line.push('"');
    } else {
        line.push_str(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_when_needed() {
        let mut out = Vec::new();
        CsvWriter::new(&mut out).row(["a", "b,c", "say \"hi\"", "-5", "=1+1"]).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "a,\"b,c\",\"say \"\"hi\"\"\",-5,\"'=1+1\"\n");
    }
}
