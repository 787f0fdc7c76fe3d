//! Table names as a user types them after `SERVICE:`, read the way PostgreSQL reads them:
//! an unquoted name folds to lower case (`public.Orders` is `public.orders`, as in psql),
//! a double-quoted one is kept exactly (`"Sales"."Order Items"`, `"a.b".c`), `""` inside
//! quotes is one `"`. Anything that is not one or two such names is a query.

/// What the text after `SERVICE:` names.
#[derive(Debug, PartialEq, Eq)]
pub enum Named {
    Table {
        schema: String,
        table: String,
    },
    /// Not a (possibly qualified) name: the text is a query.
    NotAName,
}

/// Text meant as a table name that is not a valid one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("unterminated quoted name in '{0}'")]
    Unterminated(String),
    #[error("'{0}' has an empty quoted name (\"\")")]
    EmptyQuoted(String),
    #[error(
        "'{0}' has more than two parts: give a table as SCHEMA.TABLE or TABLE (the database is the linked service's)"
    )]
    TooManyParts(String),
}

/// Reads `TABLE`, `SCHEMA.TABLE` or their quoted forms; `Err` for text that is clearly meant
/// as a name but is not a valid one (an unterminated quote, `db.schema.table`, `""`).
pub fn parse_table(text: &str) -> Result<Named, NameError> {
    let mut parts = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let part = match chars.peek() {
            Some('"') => {
                chars.next();
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            name.push('"');
                        }
                        Some('"') => break,
                        Some(c) => name.push(c),
                        None => return Err(NameError::Unterminated(text.to_string())),
                    }
                }
                if name.is_empty() {
                    return Err(NameError::EmptyQuoted(text.to_string()));
                }
                name
            }
            Some(c) if c.is_alphabetic() || *c == '_' => {
                let mut name = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_alphanumeric() || c == '_' || c == '$' {
                        // PostgreSQL folds only ASCII letters of unquoted names.
                        name.push(c.to_ascii_lowercase());
                        chars.next();
                    } else {
                        break;
                    }
                }
                name
            }
            _ => return Ok(Named::NotAName),
        };
        parts.push(part);
        match chars.next() {
            None => break,
            Some('.') => continue,
            Some(_) => return Ok(Named::NotAName),
        }
    }
    match <[String; 2]>::try_from(parts) {
        Ok([schema, table]) => Ok(Named::Table { schema, table }),
        Err(parts) if parts.len() == 1 => Ok(Named::Table {
            schema: "public".into(),
            table: parts.into_iter().next().expect("one part"),
        }),
        Err(_) => Err(NameError::TooManyParts(text.to_string())),
    }
}

/// `name` for SQL: always quoted, so it means exactly the stored name.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `name` as a user would type it: bare when PostgreSQL would read it back unchanged.
pub fn display_ident(name: &str) -> String {
    let bare = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if bare { name.to_string() } else { quote_ident(name) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(schema: &str, table: &str) -> Result<Named, NameError> {
        Ok(Named::Table {
            schema: schema.into(),
            table: table.into(),
        })
    }

    #[test]
    fn names_read_as_postgresql_reads_them() {
        assert_eq!(parse_table("orders"), table("public", "orders"));
        assert_eq!(parse_table("public.Orders"), table("public", "orders"));
        assert_eq!(parse_table("\"Sales\".\"Order Items\""), table("Sales", "Order Items"));
        assert_eq!(parse_table("\"a.b\".c"), table("a.b", "c"));
        assert_eq!(parse_table("\"say \"\"hi\"\"\""), table("public", "say \"hi\""));
        assert_eq!(parse_table("s_1.t$2"), table("s_1", "t$2"));
    }

    #[test]
    fn queries_are_not_names() {
        for q in [
            "select * from t",
            "with x as (select 1) select * from x",
            "t where x",
            "(select 1)",
            "1",
        ] {
            assert_eq!(parse_table(q), Ok(Named::NotAName), "{q}");
        }
    }

    #[test]
    fn broken_names_are_errors() {
        for bad in ["\"open", "db.public.t", "\"\".t", "a.\"b"] {
            assert!(parse_table(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn display_reads_back_to_the_same_name() {
        for name in ["orders", "Order Items", "a.b", "say \"hi\"", "_x1", "1st"] {
            let shown = format!("{}.{}", display_ident("public"), display_ident(name));
            assert_eq!(parse_table(&shown), table("public", name), "{shown}");
        }
        assert_eq!(display_ident("orders"), "orders");
        assert_eq!(display_ident("Orders"), "\"Orders\"");
    }

    #[test]
    fn errors_read_as_before() {
        let said = |text: &str| parse_table(text).unwrap_err().to_string();
        assert_eq!(said("\"abc"), "unterminated quoted name in '\"abc'");
        assert_eq!(said("\"\".t"), "'\"\".t' has an empty quoted name (\"\")");
        assert_eq!(
            said("a.b.c"),
            "'a.b.c' has more than two parts: give a table as SCHEMA.TABLE or TABLE (the database is the linked service's)"
        );
    }
}
