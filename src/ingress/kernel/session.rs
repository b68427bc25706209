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

pub struct Session {
    /// Killed when dropped (the node stopping, or the session given up).
    _child: Child,
    stdin: ChildStdin,
    /// Its standard output and error, as one stream (in the order
    /// written).
    out: Lines<BufReader<ChildStdout>>,
    name: String,
}

impl Session {
    /// Starts `nft -i` and makes the table `name`, owned by it.
    pub async fn open(name: &str) -> Result<Self, NftError> {
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "exec nft -i 2>&1"])
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
            _child: child,
            stdin,
            out: BufReader::new(stdout).lines(),
            name: name.to_string(),
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
        let asked = format!("{}\nlist table ip {name}\n", line.trim_end());
        self.stdin
            .write_all(asked.as_bytes())
            .await
            .map_err(NftError::Pipe)?;
        self.stdin.flush().await.map_err(NftError::Pipe)?;
        // Whatever comes before the listing is what nft said against the
        // line; the listing ends with its table's closing brace.
        let start = format!("table ip {name} {{");
        let mut said = Vec::new();
        let mut listing: Option<String> = None;
        loop {
            let Some(text) = self.out.next_line().await.map_err(NftError::Pipe)? else {
                return Err(NftError::Pipe(std::io::Error::other(format!(
                    "nft ended: {}",
                    said.join("\n")
                ))));
            };
            match &mut listing {
                None if text.starts_with(&start) => listing = Some(text + "\n"),
                None => said.push(text),
                Some(list) => {
                    list.push_str(&text);
                    list.push('\n');
                    if text == "}" {
                        break;
                    }
                }
            }
        }
        if said.iter().any(|l| l.starts_with("Error")) {
            return Err(NftError::Refused(said.join("\n")));
        }
        Ok(listing.unwrap_or_default())
    }
}
