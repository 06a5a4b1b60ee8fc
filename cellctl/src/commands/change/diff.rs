//! The plan's unified diff of cells.yaml: small, dependency-free (the file is
//! a few dozen lines, so an O(n·m) longest-common-subsequence table is fine).

/// A unified diff (3 lines of context) of two texts, `--- name` / `+++ name
/// (planned)`; "(no change)" when equal.
pub fn unified_diff(old: &str, new: &str, name: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // Longest common subsequence table (cells.yaml is small).
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // Edit script: (kind, old index, new index).
    let mut ops = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', i, j));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', i, j));
            i += 1;
        } else {
            ops.push(('+', i, j));
            j += 1;
        }
    }
    let mut text = format!("--- {name}\n+++ {name} (planned)\n");
    if ops.iter().all(|(kind, _, _)| *kind == ' ') {
        text.push_str("(no change)\n");
        return text;
    }
    const CONTEXT: usize = 3;
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != ' ').collect();
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(CONTEXT);
        let mut end = changed[k];
        while k < changed.len() && changed[k] <= end + 2 * CONTEXT + 1 {
            end = changed[k];
            k += 1;
        }
        let end = (end + CONTEXT + 1).min(ops.len());
        let hunk = &ops[start..end];
        let old_len = hunk.iter().filter(|op| op.0 != '+').count();
        let new_len = hunk.iter().filter(|op| op.0 != '-').count();
        let (_, old_start, new_start) = hunk[0];
        text.push_str(&format!(
            "@@ -{},{old_len} +{},{new_len} @@\n",
            old_start + usize::from(old_len > 0),
            new_start + usize::from(new_len > 0)
        ));
        for &(kind, i, j) in hunk {
            let line = if kind == '+' { b[j] } else { a[i] };
            text.push(kind);
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}
