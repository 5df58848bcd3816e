//! `neurograph repl`: an interactive session on a local simulation (a
//! scenario, an input file, or a resumed WAL). Each line is one command;
//! [`Repl::execute`] runs it against the [`Session`] and returns the text to
//! print, so the commands are tested without a terminal and the binary only
//! adds line editing and history (rustyline).

use crate::app::runner::Session;
use crate::model::commands::SimCommand;
use crate::model::components::{LinkSpec, TokenId, TokenSpec};
use crate::model::math::Vec8;
use std::fmt::Write as _;
use std::path::Path;

/// The help text of `/help`.
pub const HELP: &str = "\
commands:
  /help                          this text
  /status                        tick, tokens, links, groups, digest, WAL
  /stats                         the run summary's figures (ticks/s, neighbours, memory, ARI)
  /step [N]                      run N ticks (default 1); Ctrl-C stops between ticks
  /query X0 .. X7 [k=K | r=R]    the K nearest tokens (default 10), or all within R, of a point
  /token ID                      one token's position, velocity, charge, mass, field
  /spawn X0 .. X7 [charge=Q] [mass=M] [radius=R] [strength=S]
                                 spawn a token; prints its id
  /link A B [weight=W] [rest=L]  link two tokens (defaults 1 and 0.5)
  /despawn ID                    remove a token and its links
  /save FILE.csv                 write the tokens as a `run --input` CSV
  /quit                          close the WAL (if any) and leave (also Ctrl-D)";

/// What a line asks for besides its output.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Go on reading lines.
    Continue,
    /// Leave.
    Quit,
}

/// A REPL over a session.
pub struct Repl {
    /// The run.
    pub session: Session,
    /// Why the run is over (a tick failed: its WAL writer, a panic with no
    /// recovery, a lost GPU); the REPL then leaves.
    pub ended: Option<String>,
    /// Files the REPL must not overwrite (its input).
    pub protected: Vec<std::path::PathBuf>,
}

fn number<T: std::str::FromStr>(word: &str, what: &str) -> Result<T, String> {
    word.parse()
        .map_err(|_| format!("{what}: {word:?} is not a valid number"))
}

/// Eight coordinates from the front of `words`.
fn point(words: &[&str]) -> Result<Vec8, String> {
    if words.len() < 8 {
        return Err(format!(
            "a point needs 8 coordinates; {} given",
            words.len()
        ));
    }
    let mut a = [0f32; 8];
    for (k, w) in words[..8].iter().enumerate() {
        a[k] = number(w, &format!("coordinate {k}"))?;
        if !a[k].is_finite() {
            return Err(format!("coordinate {k} = {w}: must be a finite number"));
        }
    }
    Ok(Vec8::from_array(a))
}

/// `key=value` options; an unknown key is an error naming the known ones.
fn options<'a>(words: &[&'a str], known: &[&str]) -> Result<Vec<(&'a str, f32)>, String> {
    words
        .iter()
        .map(|w| {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| format!("{w:?}: expected key=value ({})", known.join(", ")))?;
            if !known.contains(&k) {
                return Err(format!("unknown option {k:?}: {}", known.join(", ")));
            }
            Ok((k, number(v, k)?))
        })
        .collect()
}

fn id(word: &str) -> Result<TokenId, String> {
    number::<u64>(word, "token id").map(TokenId)
}

fn fmt_point(p: Vec8) -> String {
    let parts: Vec<String> = p.to_array().iter().map(|v| format!("{v:.4}")).collect();
    format!("[{}]", parts.join(", "))
}

impl Repl {
    /// Runs one line. Empty lines and lines without a leading `/` that are
    /// blank do nothing.
    ///
    /// # Errors
    /// The message to print for a bad command or argument, or a refusal by
    /// the engine (with the value and the limit); the world is unchanged.
    pub fn execute(
        &mut self,
        line: &str,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<(String, Next), String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&cmd, args)) = words.split_first() else {
            return Ok((String::new(), Next::Continue));
        };
        let out = match cmd {
            "/help" | "/?" => HELP.to_string(),
            "/status" => self.status(),
            "/stats" => self.stats(),
            "/step" => self.step(args, interrupted)?,
            "/query" => self.query(args)?,
            "/token" => self.token(args)?,
            "/spawn" => self.spawn(args)?,
            "/link" => self.link(args)?,
            "/despawn" => {
                let [w] = args else {
                    return Err("usage: /despawn ID".into());
                };
                let target = id(w)?;
                self.apply(SimCommand::Despawn(target))?;
                format!("despawned {target}")
            }
            "/save" => self.save(args)?,
            "/quit" | "/exit" => return Ok((String::new(), Next::Quit)),
            other if other.starts_with('/') => {
                return Err(format!("unknown command {other}; /help lists them"));
            }
            _ => return Err("commands start with /; /help lists them".into()),
        };
        Ok((out, Next::Continue))
    }

    /// Commands applied since the last tick that a WAL has not journaled yet
    /// (they are journaled with the next tick).
    pub fn unjournaled(&self) -> usize {
        let world = self.session.sim().world();
        if world.get_resource::<crate::wal::Journal>().is_none() {
            return 0;
        }
        world
            .get_resource::<crate::model::commands::CommandLog>()
            .map_or(0, |l| l.applied.len())
    }

    fn apply(&mut self, cmd: SimCommand) -> Result<(), String> {
        self.session
            .sim_mut()
            .apply(cmd)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn status(&mut self) -> String {
        let sim = self.session.sim_mut();
        let groups = sim.hierarchy().groups_per_level();
        let mut s = format!(
            "tick {}  tokens {}  links {}  groups per level {:?}  digest {}",
            sim.tick(),
            sim.token_count(),
            sim.link_count(),
            groups,
            sim.digest()
        );
        if let Some(j) = sim.world().get_resource::<crate::wal::Journal>() {
            let st = j.stats();
            let _ = write!(
                s,
                "\nWAL {}: {} records, durable tick {}",
                j.durability().name(),
                st.records,
                st.durable_tick
            );
        }
        s
    }

    fn stats(&mut self) -> String {
        let r = self.session.summary();
        let ari = |a: Option<f64>| a.map_or("-".to_string(), |v| format!("{v:.3}"));
        format!(
            "ticks run {} ({:.1} ticks/s, {:.0} token-steps/s)\n\
             avg neighbours {:.2}  list rebuilds {}  CDNA violations {}\n\
             links formed {}  pruned {}  groups per level {:?}\n\
             ARI level 1 {}  level 2 {} ({} labelled tokens)\n\
             memory {:.0} B/token measured, peak RSS {:.1} MiB",
            r.ticks,
            r.ticks_per_s,
            r.token_steps_per_s,
            r.avg_neighbors,
            r.neighbor_rebuilds,
            r.cdna_violations,
            r.links_formed,
            r.links_pruned,
            r.groups_per_level,
            ari(r.ari_level1),
            ari(r.ari_level2),
            r.labelled_tokens,
            r.memory.bytes_per_token,
            r.peak_rss_bytes as f64 / (1 << 20) as f64
        )
    }

    fn step(&mut self, args: &[&str], interrupted: &dyn Fn() -> bool) -> Result<String, String> {
        let n: u64 = match args {
            [] => 1,
            [w] => number(w, "N")?,
            _ => return Err("usage: /step [N]".into()),
        };
        let t0 = std::time::Instant::now();
        let mut done = 0;
        while done < n {
            if interrupted() {
                break;
            }
            if let Err(e) = self.session.step() {
                self.ended = Some(e.to_string());
                return Err(format!("{e}; the run is over"));
            }
            done += 1;
        }
        let secs = t0.elapsed().as_secs_f64();
        Ok(format!(
            "{}ran {done} ticks in {secs:.3} s; tick {}",
            if done < n { "interrupted: " } else { "" },
            self.session.tick()
        ))
    }

    fn query(&mut self, args: &[&str]) -> Result<String, String> {
        let p = point(args)?;
        let opts = options(&args[8..], &["k", "r"])?;
        let sim = self.session.sim_mut();
        let hits = match opts.as_slice() {
            [] => sim.nearest(p, 10),
            [("k", k)] if *k >= 0.0 && k.fract() == 0.0 && f64::from(*k) <= f64::from(u32::MAX) => {
                sim.nearest(p, *k as usize)
            }
            [("k", k)] => {
                return Err(format!(
                    "k = {k}: must be a whole number in [0, {}]",
                    u32::MAX
                ));
            }
            [("r", r)] => sim.within(p, *r),
            _ => return Err("give k=K or r=R, not both".into()),
        }
        .map_err(|e| e.to_string())?;
        let mut s = format!("{} tokens", hits.len());
        for (id, d) in hits.iter().take(1000) {
            let _ = write!(s, "\n  {id:>10}  distance {d:.5}");
        }
        if hits.len() > 1000 {
            let _ = write!(s, "\n  ... {} more", hits.len() - 1000);
        }
        Ok(s)
    }

    fn token(&mut self, args: &[&str]) -> Result<String, String> {
        let [w] = args else {
            return Err("usage: /token ID".into());
        };
        let target = id(w)?;
        let t = self
            .session
            .sim()
            .token(target)
            .ok_or_else(|| format!("unknown token {target}"))?;
        Ok(format!(
            "token {}  level {}  kind {:?}\n  position {}\n  velocity {}\n  charge {}  mass {}  radius {}  strength {}",
            t.id,
            t.level,
            t.kind,
            fmt_point(t.position),
            fmt_point(t.velocity),
            t.charge,
            t.mass,
            t.field.radius,
            t.field.strength
        ))
    }

    fn spawn(&mut self, args: &[&str]) -> Result<String, String> {
        let mut spec = TokenSpec::at(point(args)?);
        for (k, v) in options(&args[8..], &["charge", "mass", "radius", "strength"])? {
            match k {
                "charge" => spec.charge = v,
                "mass" => spec.mass = v,
                "radius" => spec.radius = v,
                _ => spec.strength = v,
            }
        }
        let id = self
            .session
            .sim_mut()
            .spawn(spec)
            .map_err(|e| e.to_string())?;
        Ok(format!("spawned {id}"))
    }

    fn link(&mut self, args: &[&str]) -> Result<String, String> {
        if args.len() < 2 {
            return Err("usage: /link A B [weight=W] [rest=L]".into());
        }
        let (a, b) = (id(args[0])?, id(args[1])?);
        let mut spec = LinkSpec::new(1.0, 0.5);
        for (k, v) in options(&args[2..], &["weight", "rest"])? {
            match k {
                "weight" => spec.weight = v,
                _ => spec.rest_length = v,
            }
        }
        self.apply(SimCommand::Link { a, b, spec })?;
        Ok(format!("linked {a} and {b}"))
    }

    fn save(&mut self, args: &[&str]) -> Result<String, String> {
        let [path] = args else {
            return Err("usage: /save FILE.csv".into());
        };
        let path = Path::new(path);
        crate::app::paths::check_output_file(path, &["csv"]).map_err(|e| e.to_string())?;
        if let Some(p) = self.protected.iter().find(|p| {
            crate::app::paths::same_file(p, path) || crate::app::paths::in_directory(path, p)
        }) {
            return Err(format!(
                "{}: would overwrite or land in {}, which this session reads",
                path.display(),
                p.display()
            ));
        }
        let sim = self.session.sim_mut();
        let ids = sim.ids();
        let written = crate::app::paths::write_whole(path, |out| {
            let write = || -> Result<(), Box<dyn std::error::Error>> {
                let mut w = csv::Writer::from_writer(out);
                w.write_record([
                    "x0", "x1", "x2", "x3", "x4", "x5", "x6", "x7", "charge", "mass", "radius",
                    "strength",
                ])?;
                for id in &ids {
                    let Some(t) = sim.token(TokenId(*id)) else {
                        continue;
                    };
                    let mut rec: Vec<String> = t
                        .position
                        .to_array()
                        .iter()
                        .map(|v| v.to_string())
                        .collect();
                    for v in [t.charge, t.mass, t.field.radius, t.field.strength] {
                        rec.push(v.to_string());
                    }
                    w.write_record(&rec)?;
                }
                w.flush()?;
                Ok(())
            };
            write().map_err(|e| e.to_string())?;
            Ok(Some(ids.len()))
        })
        .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(format!(
            "wrote {} tokens to {}",
            written.unwrap_or(0),
            path.display()
        ))
    }
}
