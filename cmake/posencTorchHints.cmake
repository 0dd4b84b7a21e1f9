# Hints that let find_package(Torch) succeed with a pip-installed CUDA torch: the toolkit's
# headers from /usr/local/cuda (whose nvcc may be reached through a wrapper elsewhere on PATH)
# and nvrtc from the nvidia packages in site-packages. Shared by posenc's build and by
# posencConfig.cmake for programs that link posenc.
if(NOT CUDA_TOOLKIT_ROOT_DIR AND EXISTS /usr/local/cuda/include/cuda_runtime.h)
  set(CUDA_TOOLKIT_ROOT_DIR /usr/local/cuda)
  set(CUDAToolkit_ROOT /usr/local/cuda)
endif()
if(NOT CUDA_nvrtc_LIBRARY)
  foreach(prefix IN LISTS CMAKE_PREFIX_PATH)
    file(GLOB nvrtc_candidates "${prefix}/../../../nvidia/*/lib/libnvrtc.so*"
         "${prefix}/../../../nvidia/cuda_nvrtc/lib/libnvrtc.so*")
    if(nvrtc_candidates)
      list(GET nvrtc_candidates 0 nvrtc_found)
      set(CUDA_nvrtc_LIBRARY "${nvrtc_found}" CACHE FILEPATH "nvrtc of the pip CUDA torch")
      break()
    endif()
  endforeach()
endif()
