"""A plugin package for the tests: importing it registers Gymnasium environments, as ``ale_py`` or ``minigrid`` do.

``RollingPlugin/Dial-v0``: Discrete(20), each action lights its own column of a 20-column picture.
``RollingPlugin/Named-v0``: Discrete(3) whose actions have names (noop, jump, turn left).
``RollingPlugin/Stick-v0``: Discrete(18) named like an Atari joystick (NOOP, FIRE, UP, ..., DOWNLEFTFIRE): the
picture shows a dot moved by the stick and a bar while FIRE is in the action.
"""
import gymnasium as gym
import numpy as np

STICK = ["NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT", "UPFIRE",
         "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE", "UPRIGHTFIRE", "UPLEFTFIRE", "DOWNRIGHTFIRE", "DOWNLEFTFIRE"]


class Dial(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, render_mode=None):
        self.action_space = gym.spaces.Discrete(20)
        self.observation_space = gym.spaces.Discrete(20)
        self.render_mode, self.last = render_mode, 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.last = 0
        return 0, {}

    def step(self, action):
        self.last = int(action)
        return self.last, 0.0, False, False, {}

    def render(self):
        img = np.zeros((20, 20, 3), np.uint8)
        img[:, self.last] = 255
        return img


class Stick(Dial):
    def __init__(self, render_mode=None):
        super().__init__(render_mode)
        self.action_space = gym.spaces.Discrete(len(STICK))
        self.pos = np.array([10, 10])

    def get_action_meanings(self):
        return list(STICK)

    def reset(self, seed=None, options=None):
        self.pos = np.array([10, 10])
        return super().reset(seed=seed)

    def step(self, action):
        name = STICK[int(action)]
        self.pos += [("DOWN" in name) - ("UP" in name), ("RIGHT" in name) - ("LEFT" in name)]
        self.pos = np.clip(self.pos, 0, 19)
        return super().step(action)

    def render(self):
        img = np.zeros((20, 20, 3), np.uint8)
        img[self.pos[0], self.pos[1]] = 255
        if "FIRE" in STICK[self.last]:
            img[0, :, 0] = 255
        return img


class Named(Dial):
    """Discrete(3) with names that are not joystick moves."""

    def __init__(self, render_mode=None):
        super().__init__(render_mode)
        self.action_space = gym.spaces.Discrete(3)

    def get_action_meanings(self):
        return ["noop", "jump", "turn left"]


gym.register(id="RollingPlugin/Dial-v0", entry_point=Dial)
gym.register(id="RollingPlugin/Named-v0", entry_point=Named)
gym.register(id="RollingPlugin/Stick-v0", entry_point=Stick)
