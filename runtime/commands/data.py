"""Data commands: ``record``, ``check``, ``import``, ``export``."""
from __future__ import annotations

from omegaconf import OmegaConf

from games.data.actions import ActionSpace
from games.data.errors import InputError
from runtime.commands.game import build_game


def record(cfg) -> int:
    from games.record import record_dataset

    from games import make_agent

    make_agent(cfg.agent, build_game(cfg.game), int(cfg.seed))  # fail on a bad game or agent before writing
    summary = record_dataset(cfg.out, game_factory=lambda: build_game(cfg.game), agent_name=cfg.agent,
                             episodes=int(cfg.episodes), frames=int(cfg.frames), seed=int(cfg.seed),
                             chunk_frames=int(cfg.chunk_frames), progress=bool(cfg.progress),
                             source={"game_config": OmegaConf.to_container(cfg.game)})
    print(summary.line())
    return 0


def check(cfg) -> int:
    if cfg.ckpt:
        from worldmodel.checkpoint import describe_checkpoint

        for line in describe_checkpoint(cfg.ckpt):
            print(line)
        if not cfg.data:
            return 0
    if not cfg.data:
        raise InputError("say what to check: data=DIR or ckpt=FILE")
    from games.record import check_dataset

    report = check_dataset(cfg.data)
    for line in report.lines():
        print(line)
    return 1 if report.damaged else 0


def import_(cfg) -> int:
    from games.data.video import import_video

    space = None
    if cfg["keys"] is not None:
        keys = [cfg["keys"]] if isinstance(cfg["keys"], str) else list(cfg["keys"])
        space = ActionSpace(keys=tuple(keys), mouse=bool(cfg.mouse), mouse_scale=float(cfg.mouse_scale))
    elif cfg.mouse is not None:
        raise InputError("mouse= needs keys= too (or leave both to be inferred from the log)")
    summary = import_video(cfg.video, cfg.actions, cfg.out, width=cfg.width, height=cfg.height, fps=cfg.fps,
                           action_space=space, game=cfg.name, chunk_frames=int(cfg.chunk_frames),
                           progress=bool(cfg.progress))
    print(f"{summary.root}: episode {summary.episode}, {summary.frames} frames at {summary.fps:g} fps "
          f"(from {summary.source_frames} video frames at {summary.source_fps:g} fps)")
    return 0


def export(cfg) -> int:
    from games.data.video import export_mp4

    out = export_mp4(cfg.data, cfg.out, episode=cfg.episode, scale=int(cfg.scale))
    print(f"wrote {out}")
    return 0
