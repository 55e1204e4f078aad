"""MultiWorkerMirroredStrategy trains a tiny Keras model for a few steps on each worker's own
data (the launcher gives TF_CONFIG); each worker writes its weights to OUT_DIR/rank-R.json.

Run with TF_USE_LEGACY_KERAS=1 and tf-keras installed: Keras 3's fit does not run under this
strategy (keras-team/keras#20585). ``--fail-rank R`` makes worker R exit 3 after the first
step, while the others wait in the next all-reduce.
"""

import argparse
import json
import os
import socket
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

parser = argparse.ArgumentParser()
parser.add_argument("out_dir")
parser.add_argument("--steps", type=int, default=4)
parser.add_argument("--fail-rank", type=int, default=-1)
args = parser.parse_args()

strategy = tf.distribute.MultiWorkerMirroredStrategy()
config = json.loads(os.environ["TF_CONFIG"])
index = config["task"]["index"]


class FailAfterFirstStep(tf.keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if index == args.fail_rank:
            print(f"worker {index} failing on purpose", flush=True)
            sys.exit(3)


with strategy.scope():
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(1)])
    model.compile(optimizer=tf.keras.optimizers.SGD(0.05), loss="mse")
initial = [w.numpy().ravel().tolist() for w in model.weights]

rng = np.random.default_rng(index)  # every worker its own data, not sharded:
x = rng.normal(size=(64, 4)).astype("float32")
y = x @ np.array([[1.0], [-2.0], [3.0], [0.5]], dtype="float32")
# a global batch of 8: each of the 2 workers takes 4 rows a step, in order
data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
history = model.fit(data.with_options(options), epochs=1, steps_per_epoch=args.steps,
                    verbose=0, callbacks=[FailAfterFirstStep()])

record = {
    "rank": int(os.environ["RANK"]),
    "index": index,
    "tf_config": config,
    "replicas": strategy.num_replicas_in_sync,
    "keras": tf.keras.__name__,  # tf_keras... with TF_USE_LEGACY_KERAS=1
    "initial": initial,
    "weights": [w.numpy().ravel().tolist() for w in model.weights],
    "loss": history.history["loss"],
    "host": socket.gethostname(),
}
with open(os.path.join(args.out_dir, f"rank-{record['rank']}.json"), "w") as handle:
    json.dump(record, handle)
print(f"worker {index} of {strategy.num_replicas_in_sync} done, loss {record['loss'][-1]:.4f}")
