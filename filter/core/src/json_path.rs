//! Which field a JSON parse error is in.
//!
//! serde_json reports where an error happened as a line and column. This scans the document up to
//! that position, keeping a stack of open objects (with their current key) and arrays (with their
//! current index), and renders the stack as a field path such as `routes[0].variants[1].weight`.
//! It is a small non-generic function, so every error names its field without wrapping each
//! deserializer (which would make the filter's module noticeably bigger).

enum Frame {
    Object {
        key: Option<String>,
        expecting_key: bool,
    },
    Array {
        index: usize,
    },
}

/// The field path at 1-based `line` and `column` of `bytes`; empty at the top level.
pub fn path_at(bytes: &[u8], line: usize, column: usize) -> String {
    let end = offset_of(bytes, line, column).min(bytes.len());
    let mut stack: Vec<Frame> = Vec::new();
    let mut position = 0;
    while position < end {
        let Some(&byte) = bytes.get(position) else {
            break;
        };
        position += 1;
        match byte {
            b'"' => {
                let start = position;
                while position < bytes.len() {
                    match bytes.get(position) {
                        Some(b'\\') => position += 2,
                        Some(b'"') => break,
                        _ => position += 1,
                    }
                }
                let text = bytes
                    .get(start..position.min(bytes.len()))
                    .unwrap_or_default();
                position += 1;
                if let Some(Frame::Object { key, expecting_key }) = stack.last_mut() {
                    if *expecting_key {
                        *key = Some(String::from_utf8_lossy(text).into_owned());
                        *expecting_key = false;
                    }
                }
            }
            b'{' => stack.push(Frame::Object {
                key: None,
                expecting_key: true,
            }),
            b'[' => stack.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Object { expecting_key, .. }) => *expecting_key = true,
                Some(Frame::Array { index }) => *index += 1,
                None => {}
            },
            _ => {}
        }
    }
    render(&stack)
}

/// The byte offset just past `column` on `line` (both 1-based, as serde_json counts them).
fn offset_of(bytes: &[u8], line: usize, column: usize) -> usize {
    let mut line_start = 0;
    for _ in 1..line {
        match bytes.iter().skip(line_start).position(|b| *b == b'\n') {
            Some(newline) => line_start += newline + 1,
            None => return bytes.len(),
        }
    }
    line_start + column
}

fn render(stack: &[Frame]) -> String {
    let mut path = String::new();
    for frame in stack {
        match frame {
            Frame::Object { key: Some(key), .. } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Frame::Object { key: None, .. } => break,
            Frame::Array { index } => {
                path.push('[');
                path.push_str(&index.to_string());
                path.push(']');
            }
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_field_at_a_position() {
        let doc = "{\"a\": {\"b\": [1, {\"c\": \"x\"}]},\n \"d\": 2}";
        let cases: &[(usize, usize, &str)] = &[
            (1, 1, ""),
            (1, 5, "a"),
            (1, 12, "a.b"),
            (1, 14, "a.b[0]"),
            (1, 15, "a.b[1]"),
            (1, 24, "a.b[1].c"),
            (1, 25, "a.b[1].c"),
            (1, 27, "a.b"),
            (1, 28, "a"),
            (2, 5, "d"),
            (9, 1, ""),
        ];
        for (line, column, expected) in cases {
            assert_eq!(
                path_at(doc.as_bytes(), *line, *column),
                *expected,
                "{line}:{column}"
            );
        }
    }

    #[test]
    fn survives_escapes_and_garbage() {
        assert_eq!(
            path_at(br#"{"a\"b": 1"#, 1, 11),
            r#"a\"b"#,
            "keys are shown as written"
        );
        assert_eq!(path_at(b"\"unterminated", 1, 50), "");
        assert_eq!(path_at(b"]]]}}}", 1, 6), "");
        assert_eq!(path_at(&[0xff, b'{', b'"', 0xfe, b'"'], 1, 5), "\u{fffd}");
    }
}
