//! The lexical rules for a path inside a filesystem linked service, shared by the submission
//! check and the worker so that both refuse the same paths with the same words: no absolute
//! path, no `..`, no NUL; and the glob matching a source path may use.
//!
//! Pure functions of the text: nothing here touches the disk (the worker then holds
//! symbolic links to the same rule against the real filesystem).

/// A path under a service's root, split into plain names: no empty, `.` or `..` components.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelPath {
    pub names: Vec<String>,
    /// Written with a trailing `/`: the operator means a directory.
    pub dir_syntax: bool,
}

impl RelPath {
    /// Checks `text` (a path of service `service`) and splits it. Refuses absolute paths
    /// and `..` anywhere: a path that climbs out and back in (`a/../a`) is refused too,
    /// since nothing needs it and a lexical rule that admits no exception is easy to trust.
    pub fn parse(service: &str, text: &str) -> Result<RelPath, String> {
        if text.starts_with('/') {
            return Err(format!(
                "{service}:{text}: the path is absolute; paths are relative to the linked service's root"
            ));
        }
        if text.contains('\0') {
            return Err(format!("{service}: the path contains a NUL character"));
        }
        let mut names = Vec::new();
        for name in text.split('/') {
            match name {
                "" | "." => {}
                ".." => {
                    return Err(format!(
                        "{service}:{text}: the path leaves the linked service's root ('..' is not allowed)"
                    ));
                }
                name => names.push(name.to_owned()),
            }
        }
        Ok(RelPath {
            names,
            dir_syntax: text.is_empty() || text.ends_with('/') || text.ends_with("/."),
        })
    }

    pub fn has_wildcard(&self) -> bool {
        self.names.iter().any(|n| is_pattern(n))
    }

    /// The names before the first wildcard: the directory a glob walks (all of a plain path).
    pub fn literal(&self) -> &[String] {
        let n = self.names.iter().take_while(|n| !is_pattern(n)).count();
        &self.names[..n]
    }
}

/// The rule for a tabular sink's path: one file, so no wildcards and not a directory.
pub fn check_sink_file(service: &str, text: &str) -> Result<RelPath, String> {
    let rel = RelPath::parse(service, text)?;
    if rel.has_wildcard() {
        return Err(format!("{service}:{text}: a sink path cannot hold wildcards"));
    }
    if rel.names.is_empty() || rel.dir_syntax {
        return Err(format!(
            "{service}:{text}: names a directory; a table is written to one file, so give its name"
        ));
    }
    Ok(rel)
}

/// Whether files a copy writes under `sink` could be files it reads from `source` (both in
/// the same service): the sink is the source, lies in the directory the source reads, or
/// matches its glob. `sink_is_dir`: a binary sink, a directory that receives files.
pub fn overlaps(source: &RelPath, sink: &RelPath, sink_is_dir: bool) -> bool {
    let base = source.literal();
    let pattern = &source.names[base.len()..];
    if sink_is_dir {
        // A directory copy writes anywhere below the sink: any nesting either way overlaps.
        let n = base.len().min(sink.names.len());
        return base[..n] == sink.names[..n];
    }
    if !sink.names.starts_with(base) {
        return false;
    }
    pattern.is_empty() || matches_path(pattern, &sink.names[base.len()..])
}

pub fn is_pattern(name: &str) -> bool {
    name.contains(['*', '?'])
}

/// Whether a whole path (its names) matches a glob (its names): `**` stands for any number
/// of names, including none.
pub fn matches_path(pattern: &[String], names: &[String]) -> bool {
    match pattern.split_first() {
        None => names.is_empty(),
        Some((first, rest)) if first == "**" => {
            // `**` takes zero or more names, none of them hidden (as bash's globstar).
            (0..=names.len())
                .take_while(|&taken| taken == 0 || !names[taken - 1].starts_with('.'))
                .any(|taken| matches_path(rest, &names[taken..]))
        }
        Some((first, rest)) => match names.split_first() {
            Some((name, names)) => matches_name(first, name) && matches_path(rest, names),
            None => false,
        },
    }
}

/// Whether one name matches one glob name: `*` any run of characters, `?` one character,
/// anything else itself. As in the shell, a wildcard does not match a leading `.`.
pub fn matches_name(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Greedy matching with one backtrack point, the last `*`: linear in practice, and never
    // exponential, whatever the pattern.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == n[ni])) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(text: &str) -> RelPath {
        RelPath::parse("share", text).unwrap()
    }

    #[test]
    fn a_sink_inside_what_the_source_reads_overlaps() {
        assert!(overlaps(&rel("in/a.csv"), &rel("in/a.csv"), false));
        assert!(overlaps(&rel("in/"), &rel("in/sub/b.csv"), false));
        assert!(overlaps(&rel("in/*.csv"), &rel("in/b.csv"), false));
        assert!(overlaps(&rel("in/**/*.csv"), &rel("in/x/y/b.csv"), false));
        assert!(!overlaps(&rel("in/*.csv"), &rel("in/b.parquet"), false));
        assert!(!overlaps(&rel("in/a.csv"), &rel("out/a.csv"), false));
        assert!(!overlaps(&rel("in/a.csv"), &rel("in/a.csv.bak"), false));
        assert!(overlaps(&rel("in/"), &rel("in/copy/"), true));
        assert!(overlaps(&rel("in/sub/"), &rel("in/"), true));
        assert!(!overlaps(&rel("in/"), &rel("out/"), true));
    }

    #[test]
    fn sink_files_are_one_plain_file() {
        assert!(check_sink_file("share", "out/x.csv").is_ok());
        for bad in ["out/", "", "out/*.csv", "out/../../etc/x.csv", "/etc/x"] {
            assert!(check_sink_file("share", bad).is_err(), "{bad}");
        }
    }
}
