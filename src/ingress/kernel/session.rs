//! The node's own interactive `nft` (`nft -i`), kept for as long as the
//! node runs: the forwarding table belongs to it (`flags owner`), so the
//! kernel removes the table the moment it ends. It ends with the node,
//! however the node ends: at `kill -9` its standard input closes, and an
//! interactive `nft` stops at the end of its input.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::nft::NftError;
use super::rules;

/// How long one command may take before the session is given up.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Commands one session runs before it is made anew.
const COMMANDS_PER_SESSION: usize = 256;

pub struct Session {
    /// Killed when dropped (the node stopping, or the session given up).
    child: Child,
    stdin: ChildStdin,
    /// Its standard output and error, as one stream (in the order
    /// written).
    out: Lines<BufReader<ChildStdout>>,
    name: String,
    /// Commands run so far.
    commands: usize,
}

impl Session {
    /// Starts `nft -i` and makes the table `name`, owned by it.
    pub async fn open(name: &str) -> Result<Self, NftError> {
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "exec nft -i 2>&1"])
            // Its history is not written anywhere at its end.
            .env("HOME", "/dev/null")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(NftError::Spawn)?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(NftError::Pipe(std::io::Error::other("no pipes to nft")));
        };
        let mut session = Session {
            child,
            stdin,
            out: BufReader::new(stdout).lines(),
            name: name.to_string(),
            commands: 0,
        };
        session.run(&rules::owned_table(name)).await?;
        Ok(session)
    }

    /// Runs `line` (one transaction: all of it or nothing), then lists the
    /// table; the listing (with the rules' counters), or what `nft` said
    /// against the line. A session that fails to answer in time is
    /// broken: drop it.
    pub async fn run(&mut self, line: &str) -> Result<String, NftError> {
        tokio::time::timeout(COMMAND_TIMEOUT, self.run_once(line))
            .await
            .map_err(|_| NftError::Hung(COMMAND_TIMEOUT))?
    }

    async fn run_once(&mut self, line: &str) -> Result<String, NftError> {
        let name = &self.name;
        let end = end_marker(name);
        let asked = format!("{}\nlist table ip {name}\n{end}\n", line.trim_end());
        self.stdin
            .write_all(asked.as_bytes())
            .await
            .map_err(NftError::Pipe)?;
        self.stdin.flush().await.map_err(NftError::Pipe)?;
        self.commands = self.commands.saturating_add(1);
        // The marker's own error echoes it, then points at it: the last
        // two lines of the answer.
        let mut said = Vec::new();
        loop {
            let Some(text) = self.out.next_line().await.map_err(NftError::Pipe)? else {
                return Err(NftError::Pipe(std::io::Error::other(format!(
                    "nft ended: {}",
                    said.join("\n")
                ))));
            };
            let at_end = text == end;
            said.push(text);
            if at_end {
                break;
            }
        }
        let _pointer = self.out.next_line().await.map_err(NftError::Pipe)?;
        answer(&said, name)
    }

    /// Whether the session has run so many commands that it should be
    /// made anew (`nft -i` keeps every line it read in its history).
    pub fn worn(&self) -> bool {
        self.commands >= COMMANDS_PER_SESSION
    }

    /// Ends the session and waits until `nft` has gone (with it, its
    /// table).
    pub async fn close(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A command that always fails, naming a table that is never made: `nft`
/// echoes it when it reports the error, which marks the end of the answer
/// to what was asked before it.
fn end_marker(name: &str) -> String {
    format!("list table ip {name}_end")
}

/// What `nft` said to a line, its table's listing and the end marker's
/// error (`said`, in order): the listing, or what `nft` said against the
/// line (any error before the marker's own).
fn answer(said: &[String], name: &str) -> Result<String, NftError> {
    let start = format!("table ip {name} {{");
    let mut listing: Option<String> = None;
    let mut listed = false;
    let mut errors = Vec::new();
    // The marker's error: the line before its echo.
    let before_end = said.len().saturating_sub(2);
    for text in said.iter().take(before_end) {
        match &mut listing {
            Some(list) if !listed => {
                list.push_str(text);
                list.push('\n');
                listed = text == "}";
            }
            None if text.starts_with(&start) && !text.ends_with('}') => {
                listing = Some(format!("{text}\n"));
            }
            _ => errors.push(text.as_str()),
        }
    }
    if errors.iter().any(|l| l.starts_with("Error")) || !listed {
        return Err(NftError::Refused(errors.join("\n")));
    }
    Ok(listing.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn the_listing_is_the_answer_when_nothing_failed() {
        let said = lines(
            "table ip cube_ingress_7 { # progname nft\n\tflags owner\n}\n\
             Error: No such file or directory\nlist table ip cube_ingress_7_end\n",
        );
        assert_eq!(
            answer(&said, "cube_ingress_7").unwrap(),
            "table ip cube_ingress_7 { # progname nft\n\tflags owner\n}\n"
        );
    }

    #[test]
    fn an_error_before_the_marker_is_the_answer() {
        // A kernel without `flags owner`: the table is never made, so its
        // listing fails too; the answer comes at once, not at a timeout.
        let said = lines(
            "Error: unknown table option owner\ntable ip cube_ingress_7 { flags owner; }\n\
             \x20                        ^^^^^\nError: No such file or directory\n\
             list table ip cube_ingress_7\n              ^^^^^^^^^^^^^^\n\
             Error: No such file or directory\nlist table ip cube_ingress_7_end\n",
        );
        let e = answer(&said, "cube_ingress_7").unwrap_err();
        assert!(e.to_string().contains("unknown table option owner"), "{e}");
        // The echo of the failed command is not taken for a listing.
        assert!(matches!(e, NftError::Refused(_)));
    }

    #[test]
    fn no_listing_and_no_error_is_still_an_error() {
        let said = lines("Error: No such file or directory\nlist table ip t_end\n");
        assert!(answer(&said, "t").is_err());
    }
}
