"""Running one model from many Python threads at once, for the tests that check each call gets
its own activation buffers."""
import threading


def run_concurrently(model, inputs, repeats):
    """Each input in its own thread, all released together, ``repeats`` calls each. Returns
    (results per input, exceptions raised in the threads)."""
    barrier = threading.Barrier(len(inputs))
    results = [[] for _ in inputs]
    errors = []

    def work(k):
        try:
            barrier.wait()
            for _ in range(repeats):
                results[k].append(model(inputs[k]))
        except Exception as e:   # returned to the caller: a thread's exception is otherwise lost
            errors.append(e)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(len(inputs))]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return results, errors
