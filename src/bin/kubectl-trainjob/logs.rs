//! `kubectl trainjob logs`: what every pod of a job has written so far, merged in time order;
//! with `--follow`, then every new line as it comes, until the job ends
//! (`trainjob_operator::view::logs`, which the dashboard streams too).

use std::io::Write;

use futures::StreamExt;
use kube::Client;
use trainjob_operator::cli;
use trainjob_operator::view::logs::{self, Selection};

use super::Failure;
use super::reads::fail;

/// Prints the logs of job `name`: `timestamps` keeps each line's time, `follow` goes on.
pub async fn print(
    client: &Client,
    ns: &str,
    name: &str,
    sel: Selection,
    timestamps: bool,
    follow: bool,
) -> Result<(), Failure> {
    let read = logs::read(client, ns, name, &sel).await.map_err(fail)?;
    if read.pods.is_empty() && !follow {
        return Err(format!(
            "TrainJob {name} has no started pods{} yet; `kubectl trainjob describe {name}` says why, \
             or add --follow to wait for them",
            sel.role
                .as_ref()
                .map(|r| format!(" of role {r}"))
                .unwrap_or_default()
        ));
    }
    let mut out = std::io::stdout().lock();
    // A reader that went away (`| head`) ends it quietly.
    if out
        .write_all(cli::merge_logs(&read.logs, timestamps).as_bytes())
        .and_then(|()| out.flush())
        .is_err()
        || !follow
    {
        return Ok(());
    }
    let mut lines = logs::follow(client.clone(), ns.into(), name.into(), sel, read).boxed();
    while let Some(line) = lines.next().await {
        let line = line.map_err(fail)?;
        if writeln!(out, "{}", cli::log_line(&line.prefix, &line.line, timestamps))
            .and_then(|()| out.flush())
            .is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}
