//! Chunking without a grammar: Markdown by heading sections, everything else by line windows.

use super::pieces::{Builder, Cut, ROOT};
use super::{ChunkKind, ChunkOptions};

/// Heading titles longer than this (in characters) are cut in the symbol.
const MAX_TITLE_CHARS: usize = 120;

/// Line windows of whole lines (over-long lines cut inside), preferring to end after a blank
/// line; every chunk gets `kind`.
pub(super) fn lines(text: &str, opts: &ChunkOptions, kind: ChunkKind) -> Vec<Cut> {
    let mut b = Builder::new(text, opts, kind);
    b.push_lines(0, text.len(), ROOT);
    b.finish()
}

/// One section per ATX (`## Title`) or setext (`Title` over `===`/`---`) heading, outside
/// fenced code and front matter; the symbol is the heading path (`Install > From source`).
/// Large sections become line windows, small neighbouring sections merge.
pub(super) fn markdown(text: &str, opts: &ChunkOptions) -> Vec<Cut> {
    let mut b = Builder::new(text, opts, ChunkKind::Section);
    // Open headings, outermost first: (level, scope).
    let mut stack: Vec<(usize, usize)> = Vec::new();
    let mut cur = 0;
    let mut scope = ROOT;
    for heading in headings(text) {
        b.push(cur, heading.start, scope);
        cur = heading.start;
        while stack
            .last()
            .is_some_and(|&(level, _)| level >= heading.level)
        {
            stack.pop();
        }
        let parent = stack.last().map_or(ROOT, |&(_, s)| s);
        scope = b.scope(parent, heading.title, ChunkKind::Section);
        stack.push((heading.level, scope));
    }
    b.push(cur, text.len(), scope);
    b.finish()
}

struct Heading {
    /// Byte where the heading's first line starts.
    start: usize,
    level: usize,
    title: String,
}

/// The headings of a Markdown text, in order.
fn headings(text: &str) -> Vec<Heading> {
    let mut out = Vec::new();
    // (start, line without its line break)
    let lines: Vec<(usize, &str)> = text
        .split_inclusive('\n')
        .scan(0, |pos, line| {
            let start = *pos;
            *pos += line.len();
            Some((start, line.trim_end_matches(['\n', '\r'])))
        })
        .collect();
    let mut i = 0;
    if lines.first().is_some_and(|&(_, l)| l == "---") {
        // YAML front matter: no headings until it closes.
        i = 1;
        while i < lines.len() && !matches!(lines[i].1, "---" | "...") {
            i += 1;
        }
        i += 1;
    }
    let mut fence: Option<(char, usize)> = None;
    // Whether the previous line may be the text of a setext heading.
    let mut paragraph = false;
    while i < lines.len() {
        let (start, line) = lines[i];
        let indented = line.len() - line.trim_start_matches(' ').len();
        let body = line.trim_start_matches(' ');
        i += 1;
        if let Some((ch, len)) = fence {
            if indented < 4
                && fence_len(body, ch) >= len
                && body.trim_start_matches(ch).trim().is_empty()
            {
                fence = None;
            }
            paragraph = false;
            continue;
        }
        if indented >= 4 {
            paragraph = paragraph && !body.is_empty();
            continue;
        }
        if let Some(ch) = ['`', '~'].into_iter().find(|&c| fence_len(body, c) >= 3) {
            fence = Some((ch, fence_len(body, ch)));
            paragraph = false;
            continue;
        }
        if let Some((level, title)) = atx(body) {
            out.push(Heading {
                start,
                level,
                title: clean_title(title),
            });
            paragraph = false;
            continue;
        }
        if paragraph
            && let Some(level) = setext(body)
            && let Some(&(prev_start, prev)) = i.checked_sub(2).and_then(|p| lines.get(p))
        {
            // The heading's text is the previous line.
            out.push(Heading {
                start: prev_start,
                level,
                title: clean_title(prev.trim()),
            });
            paragraph = false;
            continue;
        }
        paragraph = !body.trim().is_empty();
    }
    out
}

/// How many `ch` open the line.
fn fence_len(body: &str, ch: char) -> usize {
    body.chars().take_while(|&c| c == ch).count()
}

/// `## Title ##` → (2, "Title").
fn atx(body: &str) -> Option<(usize, &str)> {
    let level = body.chars().take_while(|&c| c == '#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let rest = &body[level..];
    if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
        return None;
    }
    let title = rest.trim();
    let stripped = title.trim_end_matches('#');
    let title = if stripped.is_empty() || stripped.ends_with([' ', '\t']) {
        stripped.trim_end()
    } else {
        title
    };
    Some((level, title))
}

/// `===` → 1, `---` → 2 (at least three characters, nothing else but trailing spaces).
fn setext(body: &str) -> Option<usize> {
    let body = body.trim_end();
    let first = body.chars().next()?;
    let level = match first {
        '=' => 1,
        '-' => 2,
        _ => return None,
    };
    (body.len() >= 3 && body.chars().all(|c| c == first)).then_some(level)
}

fn clean_title(title: &str) -> String {
    let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
    let title = if title.is_empty() {
        "(untitled)".to_owned()
    } else {
        title
    };
    match title.char_indices().nth(MAX_TITLE_CHARS) {
        Some((at, _)) => format!("{}…", &title[..at]),
        None => title,
    }
}
